"""``python -m xpnn.export``: the command line lives in :mod:`xpnn.cli.export`."""

import sys

from xpnn.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
