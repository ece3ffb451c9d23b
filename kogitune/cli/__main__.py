"""`python -m kogitune.cli`: the `kogitune` command (node start --detach runs the node this way)."""

import sys

from . import main

sys.exit(main())
