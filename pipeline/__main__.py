"""``python -m pipeline``: the same CLI as the ``happysad`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
