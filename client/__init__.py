"""predserve client: PredserveClient (blocking) and AsyncPredserveClient (asyncio) for service-to-service
calls, their typed errors, and the `predserve` CLI. Needs grpcio, grpcio-health-checking and protobuf only."""

from predserve.client.aio import AsyncPredserveClient
from predserve.client.calls import IngestProgress
from predserve.client.csvfile import CsvFile, CsvFormatError
from predserve.client.errors import *  # noqa: F403  (every error type, see client/errors.py)
from predserve.client.errors import __all__ as _errors
from predserve.client.library import PredserveClient

__all__ = ["AsyncPredserveClient", "CsvFile", "CsvFormatError", "IngestProgress", "PredserveClient", *_errors]
