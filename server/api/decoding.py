"""Undecodable request bytes end the call with INVALID_ARGUMENT naming the method, not grpcio's INTERNAL.

grpcio answers a request its deserializer refuses with INTERNAL "Exception deserializing request!" and
logs a traceback for every such call. The generated handlers stay as they are: this interceptor swaps
in a deserializer that turns a DecodeError into a marker, and a behaviour that refuses the marker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from predserve.server.errors import InvalidArgument

logger = logging.getLogger(__name__)


class _Undecodable:
    """What the lenient deserializer gives for bytes that are not the method's request message."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class DecodingInterceptor(grpc.ServerInterceptor):
    """Gives every method of `services` (full service names) a precise answer to undecodable bytes."""

    def __init__(self, services: Sequence[str]) -> None:
        self.prefixes = tuple(f"/{service}/" for service in services)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        # A handler without a deserializer (auth's refusal) reads raw bytes and cannot fail to decode.
        if handler is None or handler.request_deserializer is None or not method.startswith(self.prefixes):
            return handler
        return _lenient_handler(handler, method)


def _lenient_handler(handler: Any, method: str) -> Any:
    deserializer = _lenient(handler.request_deserializer)
    if handler.request_streaming and handler.response_streaming:
        return handler._replace(
            request_deserializer=deserializer, stream_stream=_streaming(handler.stream_stream, method)
        )
    if handler.request_streaming:
        return handler._replace(
            request_deserializer=deserializer, stream_unary=_streaming(handler.stream_unary, method)
        )
    if handler.response_streaming:
        return handler._replace(request_deserializer=deserializer, unary_stream=_unary(handler.unary_stream, method))
    return handler._replace(request_deserializer=deserializer, unary_unary=_unary(handler.unary_unary, method))


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def lenient(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return lenient


def _unary(behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable[..., Any]:
    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            details = f"the request to {method} could not be decoded: {request.reason}"
            logger.warning("refused a call from %s: %s", context.peer(), details)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)
        return behaviour(request, context)

    return checked


def _streaming(behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable[..., Any]:
    def checked(request_iterator: Iterable[Any], context: grpc.ServicerContext) -> Any:
        return behaviour(_decoded(request_iterator, method), context)

    return checked


def _decoded(messages: Iterable[Any], method: str) -> Iterator[Any]:
    """Raises InvalidArgument inside the servicer, whose error mapping ends the call with it: aborting from
    here would be caught there as an unexpected error and turned into INTERNAL."""
    for index, message in enumerate(messages):
        if isinstance(message, _Undecodable):
            details = f"message {index} of the {method} stream could not be decoded: {message.reason}"
            logger.warning("refused a call: %s", details)
            raise InvalidArgument(details)
        yield message
