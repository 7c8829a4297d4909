"""Every call of predserve's two services, counted and timed once, and written to the access log if asked.

The outermost interceptor: it sees the call whatever answers it, auth's refusal and the decoding check
included, and reads the status the handler ended with from the context, so the servicers report nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc

from predserve.server.observability.telemetry import FinishedCall, Telemetry

access_logger = logging.getLogger("predserve.access")

# Where a request names its model: predserve's model_type, V2's model_name (ModelInfer) or name.
_MODEL_FIELDS = ("model_type", "model_name", "name")


class CallObserver(grpc.ServerInterceptor):
    def __init__(self, telemetry: Telemetry, services: Sequence[str], access_log: bool = False) -> None:
        self.telemetry = telemetry
        self.services = frozenset(services)
        self.access_log = access_log

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service not in self.services:
            return handler
        return _observed(
            handler,
            lambda name, context, started, failed: self._finish(service, method, name, context, started, failed),
        )

    def _finish(
        self, service: str, method: str, model_name: str, context: grpc.ServicerContext, started: float, failed: bool
    ) -> None:
        seconds = time.perf_counter() - started
        status = context.code()  # type: ignore[attr-defined]  # set by abort() or set_code(); None: OK
        code = status.name if status is not None else ("UNKNOWN" if failed else "OK")
        call = FinishedCall(service, method, model_name, code, seconds, context.peer())
        self.telemetry.call_finished(call)
        if self.access_log:
            access_logger.info(
                "%s %s %r %s %.3fms %s",
                service,
                method,
                model_name,
                code,
                seconds * 1000,
                call.peer,
                extra={
                    "service": service,
                    "method": method,
                    "model_type": model_name,
                    "code": code,
                    "duration_ms": round(seconds * 1000, 3),
                    "peer": call.peer,
                },
            )


Finish = Callable[[str, grpc.ServicerContext, float, bool], None]


def _observed(handler: Any, finish: Finish) -> Any:
    if handler.request_streaming and handler.response_streaming:
        return handler._replace(stream_stream=_streaming_request(_streaming_response(handler.stream_stream, finish)))
    if handler.request_streaming:
        return handler._replace(stream_unary=_streaming_request(_unary(handler.stream_unary, finish)))
    if handler.response_streaming:
        return handler._replace(unary_stream=_streaming_response(handler.unary_stream, finish))
    return handler._replace(unary_unary=_unary(handler.unary_unary, finish))


def _model_name(request: Any) -> str:
    for name in _MODEL_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, str):
            return value
    return ""


class _FirstMessage:
    """A request stream that remembers the model the first message names (a stream's header)."""

    def __init__(self, messages: Iterable[Any]) -> None:
        self._messages = iter(messages)
        self.model_name = ""
        self._seen = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        message = next(self._messages)
        if not self._seen:
            self._seen = True
            self.model_name = _model_name(message)
        return message


def _unary(behaviour: Callable[..., Any], finish: Finish) -> Callable[..., Any]:
    """One answer: the call ends when the behaviour returns (or aborts)."""

    def observed(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            answer = behaviour(request, context)
            failed = False
            return answer
        finally:
            name = request.model_name if isinstance(request, _FirstMessage) else _model_name(request)
            finish(name, context, started, failed)

    return observed


def _streaming_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def observed(request_iterator: Iterable[Any], context: grpc.ServicerContext) -> Any:
        return behaviour(_FirstMessage(request_iterator), context)

    return observed


def _streaming_response(behaviour: Callable[..., Any], finish: Finish) -> Callable[..., Any]:
    """A stream of answers: the call ends when the last one has been sent."""

    def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        failed = True
        try:
            yield from behaviour(request, context)
            failed = False
        finally:
            name = request.model_name if isinstance(request, _FirstMessage) else _model_name(request)
            finish(name, context, started, failed)

    return observed
