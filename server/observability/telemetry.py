"""The events the services report, and a sink that ignores them.

Services call these methods and know nothing of Prometheus: without --metrics-port the server, the tests
and in-process callers use `Telemetry` itself, whose methods do nothing. server/observability/metrics.py
records them as Prometheus metrics.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TrainEnd(enum.StrEnum):
    """How a Train ended, as the train duration histogram labels it."""

    PROMOTED = "promoted"  # recorded and now the current set of its model type
    REGISTERED = "registered"  # recorded, not promoted (register-only, or not better)
    FAILED = "failed"  # nothing recorded


@dataclass(frozen=True)
class FinishedCall:
    service: str  # "predserve.v1.Predserve" or "inference.GRPCInferenceService"
    method: str  # the RPC's name: Predict, ModelInfer, Train, ...
    model_type: str  # the model type or V2 model name the call names, "" when none
    code: str  # the gRPC status name: OK, NOT_FOUND, ...
    seconds: float
    peer: str


@dataclass(frozen=True)
class ServedSlot:
    """What one process serves for a model type, after a swap."""

    model_type: str
    prediction_set_id: int | None  # None when nothing is served
    loaded: bool
    fallback: bool


class Telemetry:
    """Receives every event and records none: the default sink."""

    # False: nothing is recorded, so the transport need not even time its calls.
    records = False

    def call_finished(self, call: FinishedCall) -> None:
        pass

    def rows_predicted(self, model_type: str, rows: int, runtime: str) -> None:
        """`runtime` is the form that answered: a compiled runtime's name, or "sklearn" for the pipeline."""

    def runtime_failed(self, model_type: str) -> None:
        """A compiled form raised at Predict, and the pipeline answered the call instead."""

    def batch_answered(self, calls: int) -> None:
        """One computation answered `calls` concurrent Predicts (micro-batching)."""

    def model_loaded(self, model_type: str, seconds: float) -> None:
        """A set was read, verified and made ready: start-up, promote, reload or a pinned set."""

    def slot_changed(self, slot: ServedSlot) -> None:
        pass

    def train_finished(self, model_type: str, outcome: TrainEnd, seconds: float) -> None:
        pass

    def reloaded(self, model_type: str) -> None:
        """The live reloader swapped in a set that another process made current."""

    def cache_looked_up(self, hit: bool) -> None:
        """A set's file was wanted from the cache of an object store: there and verified (hit), or not (miss)."""

    def artifact_fetched(self, size_bytes: int, seconds: float) -> None:
        """A file came from the object store, verified, into the cache."""

    def artifact_fetch_failed(self) -> None:
        """A fetch from the object store failed: no answer, refused, or bytes that do not verify."""
