"""`python -m pixart` (and `torchrun -m pixart`) runs the command line."""

import sys

from pixart.cli import main

sys.exit(main())
