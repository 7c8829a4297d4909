"""Typed domain errors. Services raise these; only the transport layer maps them to status codes."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, independent of any transport."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    CANCELLED = "cancelled"
    DATA_LOSS = "data_loss"
    INTERNAL = "internal"


class PredserveError(Exception):
    """Base of every error whose message is safe to show to a caller."""

    kind: ErrorKind = ErrorKind.INTERNAL


class InvalidArgument(PredserveError):
    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(PredserveError):
    kind = ErrorKind.NOT_FOUND


class FailedPrecondition(PredserveError):
    kind = ErrorKind.FAILED_PRECONDITION


class ResourceExhausted(PredserveError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class Unavailable(PredserveError):
    kind = ErrorKind.UNAVAILABLE


class Cancelled(PredserveError):
    """The caller is gone (deadline passed, call cancelled, server stopping): its work is not committed."""

    kind = ErrorKind.CANCELLED


class DataLoss(PredserveError):
    """Stored data is damaged (a corrupted database page): retrying will not help, restoring will."""

    kind = ErrorKind.DATA_LOSS


class StorageError(PredserveError):
    """A failure of the database or the artifact store that the caller cannot fix."""

    kind = ErrorKind.INTERNAL


class ModelsDirectoryUnwritable(PredserveError):
    """The models directory takes no file now (read-only, no permission, gone): this replica cannot train or
    import until it does; it still serves what it loaded."""

    kind = ErrorKind.UNAVAILABLE


class DatabaseUnreachable(StorageError):
    """The registry database did not answer a new connection: down, frozen, restarting, or not there yet.
    At start-up the server waits for it rather than exiting (server/app.py)."""


class ArtifactRejected(PredserveError):
    """An artifact that must not be loaded: missing, outside the store, or not the recorded bytes."""

    kind = ErrorKind.FAILED_PRECONDITION


class ArtifactMissing(ArtifactRejected):
    """No file at the recorded path. On a shared store it may merely not be visible here yet."""


class ArtifactStoreUnreachable(ArtifactMissing):
    """The object store did not answer in time (down, partitioned, throttling): the file may well be there. What
    is cached still serves; a set that needs a fetch waits and is tried again."""

    kind = ErrorKind.UNAVAILABLE


class ArtifactStoreRefused(PredserveError):
    """The object store answered but refused this server: wrong or missing credentials, no such bucket, no
    permission. Retrying will not help; the operator must fix the configuration."""

    kind = ErrorKind.FAILED_PRECONDITION
