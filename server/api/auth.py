"""Bearer-token authentication: which RPC needs which token, checked before any servicer runs.

Calls carry `authorization: Bearer <token>` metadata. The admin token may call everything, the
predict token only what serves predictions; health and reflection stay open. This module knows
method names, never services.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

logger = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "bearer "


class Role(enum.IntEnum):
    OPEN = 0
    PREDICT = 1
    ADMIN = 2


# A full method name, or a service prefix ending in "/" for every method of that service.
# An exact method wins over its service; a method matching neither needs the admin token.
REQUIRED_ROLES: dict[str, Role] = {
    "/predserve.v1.Predserve/Train": Role.ADMIN,
    "/predserve.v1.Predserve/IngestHistory": Role.ADMIN,
    "/predserve.v1.Predserve/Promote": Role.ADMIN,
    "/predserve.v1.Predserve/ImportModel": Role.ADMIN,
    "/predserve.v1.Predserve/GarbageCollect": Role.ADMIN,
    "/predserve.v1.Predserve/Predict": Role.PREDICT,
    "/predserve.v1.Predserve/ListModels": Role.PREDICT,
    "/predserve.v1.Predserve/ListPredictionSets": Role.PREDICT,
    "/predserve.v1.Predserve/ListDatasets": Role.PREDICT,
    "/inference.GRPCInferenceService/": Role.PREDICT,
    # The V2 protocol's own liveness and readiness probes say no more than grpc.health does.
    "/inference.GRPCInferenceService/ServerLive": Role.OPEN,
    "/inference.GRPCInferenceService/ServerReady": Role.OPEN,
    # The V2 model-repository extension changes what is served.
    "/inference.GRPCInferenceService/RepositoryModelLoad": Role.ADMIN,
    "/inference.GRPCInferenceService/RepositoryModelUnload": Role.ADMIN,
    "/grpc.health.v1.Health/": Role.OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/": Role.OPEN,
    "/grpc.reflection.v1.ServerReflection/": Role.OPEN,
}


def required_role(method: str) -> Role:
    if method in REQUIRED_ROLES:
        return REQUIRED_ROLES[method]
    service = method[: method.rfind("/") + 1]
    return REQUIRED_ROLES.get(service, Role.ADMIN)


@dataclass(frozen=True)
class Denial:
    code: grpc.StatusCode
    details: str


@dataclass(frozen=True)
class AuthPolicy:
    admin_token: str | None = field(default=None, repr=False)
    predict_token: str | None = field(default=None, repr=False)
    # Without an admin token, admin methods are open only where no other machine can call them.
    open_admin_without_token: bool = True

    def check(self, method: str, authorization: str | None) -> Denial | None:
        """None when the call may proceed; otherwise the status to end it with."""
        role = required_role(method)
        if role is Role.OPEN:
            return None
        presented, malformed = _bearer(authorization)
        is_admin = _matches(presented, self.admin_token)
        is_predict = _matches(presented, self.predict_token)
        if role is Role.PREDICT:
            if self.predict_token is None or is_admin or is_predict:
                return None
            return _unauthenticated(method, presented, malformed, "the predict or the admin token")
        if self.admin_token is None:
            if self.open_admin_without_token:
                return None
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is refused: no admin token is configured (PREDSERVE_ADMIN_TOKEN) "
                "and the server is not bound to a loopback address",
            )
        if is_admin:
            return None
        if is_predict:
            return Denial(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the predict token may not call {method}: it needs the admin token",
            )
        return _unauthenticated(method, presented, malformed, "the admin token")


def _bearer(authorization: str | None) -> tuple[str | None, bool]:
    """The presented token, and whether an authorization value was there but not `Bearer <token>`."""
    if authorization is None:
        return None, False
    if authorization[: len(BEARER)].lower() != BEARER or not authorization[len(BEARER) :].strip():
        return None, True
    return authorization[len(BEARER) :].strip(), False


def _matches(presented: str | None, expected: str | None) -> bool:
    if presented is None or expected is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def _unauthenticated(method: str, presented: str | None, malformed: bool, needed: str) -> Denial:
    if malformed:
        details = f"authorization metadata is not 'Bearer <token>'; {method} needs {needed}"
    elif presented is None:
        details = f"missing bearer token: {method} needs {needed} in metadata 'authorization: Bearer <token>'"
    else:
        details = f"invalid bearer token for {method}"
    return Denial(grpc.StatusCode.UNAUTHENTICATED, details)


class AuthInterceptor(grpc.ServerInterceptor):
    """Ends a call without the token its method needs before the servicer sees it."""

    def __init__(self, policy: AuthPolicy) -> None:
        self.policy = policy

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        denial = self.policy.check(method, _authorization(handler_call_details.invocation_metadata))
        handler = continuation(handler_call_details)
        if denial is None or handler is None:
            return handler
        return _denying_handler(handler, method, denial)


def _authorization(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def _denying_handler(handler: grpc.RpcMethodHandler, method: str, denial: Denial) -> grpc.RpcMethodHandler:
    """A handler of the same shape as the real one, so streaming calls are refused cleanly too."""

    def deny(request: Any, context: grpc.ServicerContext) -> None:
        # The details never hold a token, so they are safe to log.
        logger.warning("denied %s from %s: %s: %s", method, context.peer(), denial.code.name, denial.details)
        context.abort(denial.code, denial.details)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)
