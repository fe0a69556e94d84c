"""`python -m workers.compression compress ...`: the engine's command line, without the service."""

import sys

from workers.compression.cli import main

raise SystemExit(main(sys.argv[1:]))
