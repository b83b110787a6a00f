"""The command lines: python -m xpnn.train (xpnn.cli.train) and python -m xpnn.export (xpnn.cli.export).

Not imported by ``import xpnn``."""
