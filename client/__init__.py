"""predserve client: PredserveClient (blocking) and AsyncPredserveClient (asyncio) for service-to-service
calls, their typed errors, and the `predserve` CLI. Needs grpcio, grpcio-health-checking and protobuf only."""

from client.aio import AsyncPredserveClient
from client.calls import IngestProgress
from client.csvfile import CsvFile, CsvFormatError
from client.errors import *  # noqa: F403  (every error type, see client/errors.py)
from client.errors import __all__ as _errors
from client.library import PredserveClient

__all__ = ["AsyncPredserveClient", "CsvFile", "CsvFormatError", "IngestProgress", "PredserveClient", *_errors]
