"""PredserveClient: typed, blocking calls to a predserve server, with deadlines and retries on UNAVAILABLE.

One client holds one channel, reused by every call, to one server or to several replicas: give it several
targets, or one `dns:///` name that resolves to all of them. gRPC then balances round robin over the replicas
whose health service says SERVING, so a replica that is stopping (NOT_SERVING) stops receiving calls before
it goes away. The methods, their requests, answers and errors are defined once in client/calls.py, shared
with AsyncPredserveClient (client/aio.py); the channel's options and credentials in client/connection.py.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc

from predserve.client.calls import (
    PROMOTION_POLICIES,
    PredserveCalls,
    Prepared,
    SyncInvoker,
    TargetValue,
    target_message,
    target_value,
)
from predserve.client.connection import (
    BALANCED_SCHEMES,
    HEALTH_SERVICE,
    TargetPortError,
    channel_target,
    read_token,
    token_from_env,
)
from predserve.client.errors import *  # noqa: F403  (the first release's callers import the errors from here)
from predserve.client.errors import UnavailableError
from predserve.client.errors import __all__ as _errors

__all__ = [
    "BALANCED_SCHEMES",
    "HEALTH_SERVICE",
    "PROMOTION_POLICIES",
    "PredserveClient",
    "TargetPortError",
    "TargetValue",
    "channel_target",
    "read_token",
    "target_message",
    "target_value",
    "token_from_env",
    *_errors,
]

R = TypeVar("R")


class PredserveClient(PredserveCalls, SyncInvoker):
    """Blocking client. Use as a context manager, or call close(); see Invoker.__init__ for the options."""

    _channel_module = grpc

    def __enter__(self) -> PredserveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _invoke(self, prepared: Prepared[R]) -> R:
        method, arguments = self._call_arguments(prepared)
        try:
            response: Any = method(prepared.request, **arguments)
        except grpc.RpcError as exc:
            raise prepared.error(exc) from None
        return prepared.convert(response)

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Until the channel has connected to a server; UnavailableError after `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"no server at {self.target}") from None
