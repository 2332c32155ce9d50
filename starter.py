"""What can an operator do from a shell? See `python starter.py --help` (warmpool.cli)."""

import sys

from warmpool.cli import main

if __name__ == "__main__":
    sys.exit(main())
