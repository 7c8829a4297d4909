"""predserve: a gRPC prediction server for scikit-learn pipelines whose trained models survive restarts.

The one top-level package the distribution installs. The repository keeps its folders at the top (server/,
client/, protos/, db/); pyproject.toml's package-dir maps them to predserve.server, predserve.client,
predserve.protos and predserve.db. The client is what a service needs, and works in the light install
(`pip install predserve`): `from predserve import PredserveClient, AsyncPredserveClient`.
"""

from predserve.client import *  # noqa: F403  (the client's public names: PredserveClient, errors, ...)
from predserve.client import __all__ as __all__
