"""`python -m layerpeel` runs the command line."""

import sys

from layerpeel.cli import main

sys.exit(main())
