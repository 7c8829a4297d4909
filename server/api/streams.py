"""IdleStreamReaper: cancels client streams that stop sending, so that they cannot hold threads for ever.

A client-streaming call (IngestHistory, ImportModel) holds one of the server's threads while it waits for
the next message, and gRPC has no idle limit of its own for that wait. One reaper thread looks at every
open stream once a second and cancels those silent past the limit; the caller sees CANCELLED, and the
handler's loop over the messages ends with Cancelled, naming the limit, so nothing is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

import grpc

from predserve.server.errors import Cancelled

logger = logging.getLogger(__name__)

Message = TypeVar("Message")


class IdleStreamReaper:
    def __init__(self, idle_seconds: float, check_every: float = 1.0) -> None:
        self.idle_seconds = idle_seconds
        self._check_every = min(check_every, idle_seconds / 2)
        self._lock = threading.Lock()
        self._last_message: dict[grpc.ServicerContext, float] = {}
        self._reaped: set[grpc.ServicerContext] = set()
        self._thread: threading.Thread | None = None

    def watch(self, messages: Iterator[Message], context: grpc.ServicerContext) -> Iterator[Message]:
        """The stream's messages, each one resetting its idle clock."""
        self._touch(context)
        try:
            for message in messages:
                self._touch(context)
                yield message
        except grpc.RpcError:
            if context not in self._reaped:
                raise
            raise Cancelled(
                f"the stream sent nothing for over {self.idle_seconds:g}s (--stream-idle-seconds); nothing was stored"
            ) from None
        finally:
            with self._lock:
                self._last_message.pop(context, None)
                self._reaped.discard(context)

    def _touch(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._last_message[context] = time.monotonic()
            if self._thread is None:
                # Started on first use, so that it is always born in the serving process (after any fork).
                self._thread = threading.Thread(target=self._run, name="idle-streams", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._check_every)
            limit = time.monotonic() - self.idle_seconds
            with self._lock:
                idle = [context for context, last in self._last_message.items() if last < limit]
                for context in idle:
                    del self._last_message[context]
                    self._reaped.add(context)
            for context in idle:
                logger.warning(
                    "cancelling a client stream silent for over %gs (--stream-idle-seconds)", self.idle_seconds
                )
                context.cancel()
