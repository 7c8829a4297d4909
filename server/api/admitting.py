"""Slots for each class of work: a call takes a slot of its class before it runs, or is refused at once with
RESOURCE_EXHAUSTED naming the option that bounds the class; health runs on threads of its own and is never
refused.

A sync grpc server holds one thread per call in flight, a client stream waiting for its next message
included. With one bound for every call (grpc's maximum_concurrent_rpcs), 64 IngestHistory streams that
send one message and wait filled it, and health and Predict were refused until the streams were reaped.
Here idle streams can fill only their own slots; the server's pool has a thread for every slot of every
class, and grpc's own limit, which refuses whatever the call, is left off (server/app.py).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack
from typing import Any

import grpc

from predserve.server.api.status import STATUS_BY_KIND
from predserve.server.errors import ResourceExhausted
from predserve.server.options import flag_of
from predserve.server.services.admission import WorkSlots

logger = logging.getLogger(__name__)

# Check answers from memory and Watch returns at once (grpc's non-blocking form), so two threads serve any
# number of probes; no other call ever waits in their queue.
HEALTH_THREADS = 2
# Reflection is open to callers without a token: its streams get slots of their own, so that they can never
# hold the ones ingestion and imports need.
REFLECTION_STREAMS = 4
# Refusals (these, and auth's) take a thread for a moment: spare ones let them answer at once while every
# slot is held, instead of waiting behind the calls that hold them.
SPARE_THREADS = 4
# A burst of refusals is logged once per class in this many seconds; metrics and the access log count each.
WARN_EVERY_SECONDS = 10.0


class WorkClass(enum.Enum):
    HEALTH = "health"
    CALLS = "calls"
    STREAMS = "streams"
    TRAINS = "trains"
    REFLECTION = "reflection"


# A full method name, or a service prefix ending in "/" for every method of that service; an exact method
# wins over its service. Any other method is a stream if its requests stream (it may wait for them as
# IngestHistory does), else a call: Predict, ModelInfer, the listings and metadata, Promote, GarbageCollect.
CLASS_BY_METHOD: dict[str, WorkClass] = {
    "/grpc.health.v1.Health/": WorkClass.HEALTH,
    "/predserve.v1.Predserve/Train": WorkClass.TRAINS,
    "/predserve.v1.Predserve/IngestHistory": WorkClass.STREAMS,
    "/predserve.v1.Predserve/ImportModel": WorkClass.STREAMS,
    "/grpc.reflection.v1alpha.ServerReflection/": WorkClass.REFLECTION,
    "/grpc.reflection.v1.ServerReflection/": WorkClass.REFLECTION,
}


def work_class(method: str, request_streaming: bool) -> WorkClass:
    if method in CLASS_BY_METHOD:
        return CLASS_BY_METHOD[method]
    service = method[: method.rfind("/") + 1]
    if service in CLASS_BY_METHOD:
        return CLASS_BY_METHOD[service]
    return WorkClass.STREAMS if request_streaming else WorkClass.CALLS


class CallSlots:
    """The slots of every class but health, and the threads that serve them all."""

    def __init__(self, calls: int, streams: int, trains: int) -> None:
        self.by_class = {
            WorkClass.CALLS: WorkSlots(
                calls, "Predict, ModelInfer, listing and other unary calls", flag_of("max_concurrent_rpcs")
            ),
            WorkClass.STREAMS: WorkSlots(
                streams, "IngestHistory and ImportModel streams", flag_of("max_concurrent_streams")
            ),
            # Train also takes one of the slots it shares with imports (server/services/training.py); this
            # one bounds its thread from the start, while it still converts and checks its request.
            WorkClass.TRAINS: WorkSlots(trains, "Trains", flag_of("max_concurrent_trains")),
            WorkClass.REFLECTION: WorkSlots(REFLECTION_STREAMS, "server reflection streams", "fixed"),
        }
        self.threads = calls + streams + trains + REFLECTION_STREAMS + SPARE_THREADS


class AdmissionInterceptor(grpc.ServerInterceptor):
    """Runs each call in a slot of its class, or refuses it before its handler reads a message."""

    def __init__(self, slots: CallSlots) -> None:
        self.slots = slots
        # Built here, in the serving process: threads do not survive a fork (--workers).
        self.health_pool = futures.ThreadPoolExecutor(max_workers=HEALTH_THREADS, thread_name_prefix="health")
        self._warned: dict[WorkClass, float] = {}
        self._lock = threading.Lock()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        work = work_class(handler_call_details.method, handler.request_streaming)
        if work is WorkClass.HEALTH:
            return _with_behavior(handler, lambda behavior: _OnPool(behavior, self.health_pool))
        slots = self.slots.by_class[work]
        if handler.response_streaming:
            return _with_behavior(handler, lambda behavior: self._admitted_stream(behavior, work, slots))
        return _with_behavior(handler, lambda behavior: self._admitted(behavior, work, slots))

    def _admitted(self, behavior: Callable[..., Any], work: WorkClass, slots: WorkSlots) -> Callable[..., Any]:
        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            with ExitStack() as held:
                self._take(slots, work, context, held)
                return behavior(request, context)

        return admitted

    def _admitted_stream(
        self, behavior: Callable[..., Any], work: WorkClass, slots: WorkSlots
    ) -> Callable[..., Iterator[Any]]:
        """The slot is held until the last answer has been sent."""

        def admitted(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with ExitStack() as held:
                self._take(slots, work, context, held)
                yield from behavior(request, context)

        return admitted

    def _take(self, slots: WorkSlots, work: WorkClass, context: grpc.ServicerContext, held: ExitStack) -> None:
        try:
            held.enter_context(slots.taken())
        except ResourceExhausted as refusal:
            self._warn(work, refusal)
            context.abort(STATUS_BY_KIND[refusal.kind], str(refusal))

    def _warn(self, work: WorkClass, refusal: ResourceExhausted) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned.get(work, -WARN_EVERY_SECONDS) < WARN_EVERY_SECONDS:
                return
            self._warned[work] = now
        logger.warning("refusing calls: %s", refusal, extra={"event": "refused", "work_class": work.value})


class _OnPool:
    """A behavior that grpc runs on `pool` (its experimental_thread_pool), keeping grpc's non-blocking form of
    health Watch, which returns at once instead of holding a thread for as long as the watcher stays."""

    def __init__(self, behavior: Callable[..., Any], pool: futures.ThreadPoolExecutor) -> None:
        self._behavior = behavior
        self.experimental_thread_pool = pool
        self.experimental_non_blocking = getattr(behavior, "experimental_non_blocking", False)

    def __call__(self, *arguments: Any) -> Any:
        return self._behavior(*arguments)


def _with_behavior(handler: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    if handler.request_streaming and handler.response_streaming:
        return handler._replace(stream_stream=wrap(handler.stream_stream))
    if handler.request_streaming:
        return handler._replace(stream_unary=wrap(handler.stream_unary))
    if handler.response_streaming:
        return handler._replace(unary_stream=wrap(handler.unary_stream))
    return handler._replace(unary_unary=wrap(handler.unary_unary))
