"""The errors both clients raise: one class per thing a caller may want to handle, chosen without parsing text.

Every error keeps the gRPC status `code` and the server's `details`. The class follows the status code, refined
by the method that was called (and, for Predict, whether a prediction set was pinned), because the server sends
no machine-readable reason beside the code (`server/api/status.py` maps each domain error to a code and its
message only). Within one method each code has one meaning, except the one case documented on ModelNotReady.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

__all__ = [
    "DataLossError",
    "DatasetNotFound",
    "DeadlineExceeded",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "NotFoundError",
    "Overloaded",
    "PermissionDenied",
    "PermissionDeniedError",
    "PredictionSetNotFound",
    "PredserveClientError",
    "ResourceExhaustedError",
    "Unauthenticated",
    "UnauthenticatedError",
    "UnavailableError",
]


class PredserveClientError(Exception):
    """A call failed; `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class NotFoundError(PredserveClientError):
    """NOT_FOUND: something the call names does not exist."""


class ModelNotFound(NotFoundError):
    """No model type of that name: Predict of the current set, ListPredictionSets, a rollback."""


class PredictionSetNotFound(NotFoundError):
    """No prediction set of that id (or not one of the model type named): a pinned Predict, Promote."""


class DatasetNotFound(NotFoundError):
    """No rows recorded under that dataset name: Train, ImportModel with a dataset."""


class InvalidInput(PredserveClientError):
    """INVALID_ARGUMENT: the request itself is wrong (feature count, non-finite values, names, parameters)."""


class FailedPreconditionError(PredserveClientError):
    """FAILED_PRECONDITION: the request is well formed but the server's state does not allow it."""


class ModelNotReady(FailedPreconditionError):
    """Predict of a model type that is known but cannot answer: it needs training, its artifact was refused,
    or a pinned set does not verify. The server answers the same code when probabilities are asked of a model
    that gives none, so that case arrives as ModelNotReady too; `details` tells them apart for a person."""


class UnavailableError(PredserveClientError):
    """UNAVAILABLE: no server answered, or it is not ready (not synced, database locked); worth retrying."""


class Unauthenticated(PredserveClientError):
    """UNAUTHENTICATED: no token, or not one the server knows."""


class PermissionDenied(PredserveClientError):
    """PERMISSION_DENIED: a known token that may not call this method (the predict token calling Train)."""


class Overloaded(PredserveClientError):
    """RESOURCE_EXHAUSTED: a server limit was exceeded (calls at once, Trains at once, rows or bytes per
    request, the Train deadline, disk space); the details name it. Retry later, or send less."""


class DeadlineExceeded(PredserveClientError):
    """DEADLINE_EXCEEDED: no answer within the call's deadline."""


class DataLossError(PredserveClientError):
    """DATA_LOSS: the server's stored data is damaged (a corrupted database page); the details name the file."""


# The names of the first client release, kept for existing callers.
InvalidArgumentError = InvalidInput
UnauthenticatedError = Unauthenticated
PermissionDeniedError = PermissionDenied
ResourceExhaustedError = Overloaded

ErrorTable = Mapping[grpc.StatusCode, type[PredserveClientError]]

ERROR_BY_CODE: ErrorTable = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: DataLossError,
}


def error_for(code: grpc.StatusCode, details: str, by_method: ErrorTable) -> PredserveClientError:
    """The error for a failed call: the method's own class for the code, else the general one."""
    error_class = by_method.get(code) or ERROR_BY_CODE.get(code, PredserveClientError)
    return error_class(code, details)
