"""``python -m bench``: run every benchmark in turn."""

import sys

from bench import crawl, data_stages, flow, model, sources

sys.exit(crawl.main([]) or data_stages.main([]) or model.main([]) or flow.main([]) or sources.main([]))
