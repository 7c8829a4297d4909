"""AsyncPredserveClient: the same calls as PredserveClient on grpc.aio, for services that run an event loop.

No call blocks the loop: each one is awaited on the channel, which gRPC drives from the loop. The methods,
their arguments, defaults, deadlines, retry policy, round robin, client-side health checking, TLS and
token are PredserveClient's, from the same definitions (client/calls.py, client/connection.py).
Create the client inside the event loop that uses it, and close it there (`async with`, or `await close()`).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import grpc
import grpc.aio

from predserve.client.calls import AsyncInvoker, PredserveCalls, Prepared
from predserve.client.errors import UnavailableError

R = TypeVar("R")


class AsyncPredserveClient(PredserveCalls, AsyncInvoker):
    """Async client: every method returns a coroutine. Use with `async with`, or await close()."""

    _channel_module = grpc.aio

    async def __aenter__(self) -> AsyncPredserveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls still in flight are cancelled."""
        await self._channel.close()

    async def _invoke(self, prepared: Prepared[R]) -> R:
        method, arguments = self._call_arguments(prepared)
        try:
            response: Any = await method(prepared.request, **arguments)
        except grpc.RpcError as exc:  # grpc.aio.AioRpcError
            raise prepared.error(exc) from None
        return prepared.convert(response)

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Until the channel has connected to a server; UnavailableError after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"no server at {self.target}") from None
