"""What can an operator do from a shell? See `python starter.py --help` (warmpool.cli)."""

import os
import sys

from warmpool.cli import main

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal SDK's native threads can abort interpreter finalisation
    # (temporalio/sdk-python#300); the CLI has nothing left to clean up, so exit at once.
    os._exit(code)
