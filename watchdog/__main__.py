"""``python -m watchdog``: the same as the ``batch-watchdog`` console script."""

import sys

from watchdog.cli import console

sys.exit(console())
