"""`python -m server` and the `predserve-server` console script."""

import logging
import os
import sys

from server.config import parse_config


def main() -> None:
    # The flags are read before server.app imports scikit-learn, so a bad one is reported at once.
    config = parse_config()
    from server.app import run

    code = run(config)
    # A call still running after the grace period (a long fit) was cancelled and will not commit.
    # Exiting without joining its thread, as sys.exit would, keeps the stop within the grace period.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
