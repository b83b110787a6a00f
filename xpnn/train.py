"""``python -m xpnn.train``: the command line lives in :mod:`xpnn.cli.train`."""

import sys

from xpnn.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
