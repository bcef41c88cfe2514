"""``python -m phospho_logging``: the command line."""

import sys

from .cli import main

sys.exit(main())
