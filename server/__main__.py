"""`python -m server` and the `predserve-server` console script."""

import sys

from server.app import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
