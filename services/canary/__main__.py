"""`python -m services.canary ...`: see cli.py."""

import sys

from services.canary.cli import main

if __name__ == "__main__":
    sys.exit(main())
