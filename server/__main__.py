"""`python -m server` and the `predserve-server` console script; `... recover` records orphan artifacts."""

import importlib.util
import logging
import os
import sys

RECOVER = "recover"


def main() -> None:
    # The base install is the client only; say so in one line rather than with an ImportError's traceback.
    if importlib.util.find_spec("sklearn") is None:
        sys.exit("predserve-server: the server needs its dependencies: pip install 'predserve[server]'")
    from predserve.server.config import parse_config

    arguments = sys.argv[1:]
    recovering = arguments[:1] == [RECOVER]
    # The flags are read before server.app imports scikit-learn, so a bad one is reported at once.
    config = parse_config(arguments[1:] if recovering else arguments)
    from predserve.server.storage.object_store import list_early

    list_early(config.artifact_store, config.store_timeout_seconds)  # beside the imports below
    from predserve.server import app

    code = app.recover(config) if recovering else app.run(config)
    # A call still running after the grace period (a long fit) was cancelled and will not commit.
    # Exiting without joining its thread, as sys.exit would, keeps the stop within the grace period.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
