"""`python -m geosync`: the same command line as the `geosync` console script."""

from __future__ import annotations

from geosync.cli import main

if __name__ == "__main__":
    main()
