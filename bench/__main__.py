"""``python -m bench``: run every benchmark in turn."""

import sys

from bench import crawl

sys.exit(crawl.main([]))
