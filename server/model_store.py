"""The in-memory registry of servable pipelines, one slot per model type.

A slot is replaced whole, by assigning a new immutable object, so a Predict that has read a slot
keeps a complete model for the rest of its call, whatever a concurrent Train or reload swaps in.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from predserve.server.domain import PredictionSetRecord, Schema
from predserve.server.errors import FailedPrecondition, NotFound
from predserve.server.runtimes.base import Runtime


@dataclass(frozen=True)
class LoadedModel:
    record: PredictionSetRecord
    pipeline: Any
    load_seconds: float
    # Anything an operator should know about this model: a fallback, a version mismatch.
    note: str = ""
    # The current set that was refused when this older one is served in its place.
    fallback_for: int | None = None
    # The set's compiled form, proven faithful to the pipeline, which answers in its place; None: the pipeline.
    runtime: Runtime | None = None

    @property
    def is_fallback(self) -> bool:
        return self.fallback_for is not None

    @property
    def n_features(self) -> int:
        return len(self.record.feature_names)

    @property
    def schema(self) -> Schema:
        """The inputs Predict takes: numbers named by feature_names, or a typed pipeline's columns."""
        return self.record.schema

    @property
    def sha256_prefix(self) -> str:
        return self.record.artifact.sha256[:12] if self.record.artifact else ""


@dataclass(frozen=True)
class UnavailableModel:
    model_type: str
    reason: str
    record: PredictionSetRecord | None = None
    # The set could not be fetched (the object store did not answer): the live reloader tries it again.
    waiting: bool = False


Slot = LoadedModel | UnavailableModel


class ModelStore:
    def __init__(self, pinned_budget_bytes: int = 512 * 1024 * 1024) -> None:
        self._slots: dict[str, Slot] = {}
        self._pinned: OrderedDict[int, LoadedModel] = OrderedDict()
        # Artifact size stands in for memory size: a joblib file is close to the unpickled object's size.
        self._pinned_budget = pinned_budget_bytes
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, Slot], None]] = []
        self._startup_loaded = threading.Event()
        # Why these slots may not be what the database says is current (a forked worker's copy of its
        # parent's models, before it has compared them with the database); None once they agree.
        self._not_synced: str | None = None
        self._sync_listeners: list[Callable[[bool], None]] = []

    def add_listener(self, listener: Callable[[str, Slot], None]) -> None:
        """Called after every swap; the health service follows the models this way."""
        self._listeners.append(listener)

    def mark_startup_loaded(self) -> None:
        """Every model type has been given its slot at start-up; readiness probes may say so."""
        self._startup_loaded.set()

    @property
    def startup_loaded(self) -> bool:
        return self._startup_loaded.is_set()

    def add_sync_listener(self, listener: Callable[[bool], None]) -> None:
        """Called with True or False whenever the store comes to agree, or stops agreeing, with the database."""
        self._sync_listeners.append(listener)

    def mark_not_synced(self, reason: str) -> None:
        """Until mark_synced, these slots must not answer: they may be older than the database's current sets."""
        with self._lock:
            was_synced, self._not_synced = self._not_synced is None, reason
        if was_synced:
            for listener in self._sync_listeners:
                listener(False)

    def mark_synced(self) -> None:
        with self._lock:
            was_synced, self._not_synced = self._not_synced is None, None
        if not was_synced:
            for listener in self._sync_listeners:
                listener(True)

    @property
    def not_synced_reason(self) -> str | None:
        """None when every slot holds what the database said was current at the last comparison."""
        return self._not_synced

    def put(self, model_type: str, slot: Slot) -> None:
        with self._lock:
            self._slots[model_type] = slot
        for listener in self._listeners:
            listener(model_type, slot)

    def current(self, model_type: str) -> LoadedModel:
        slot = self._slots.get(model_type)
        if slot is None:
            raise NotFound(f"unknown model type {model_type!r}")
        if isinstance(slot, UnavailableModel):
            raise FailedPrecondition(f"model type {model_type!r} has no usable model: {slot.reason}")
        return slot

    def knows(self, model_type: str) -> bool:
        """Whether the model type has a slot, served or not: the names metrics may label."""
        return model_type in self._slots

    def slots(self) -> dict[str, Slot]:
        with self._lock:
            return dict(self._slots)

    def pinned(self, set_id: int) -> LoadedModel | None:
        """A set loaded on demand; the current model of its type counts as cached too."""
        with self._lock:
            for slot in self._slots.values():
                if isinstance(slot, LoadedModel) and slot.record.id == set_id:
                    return slot
            model = self._pinned.get(set_id)
            if model is not None:
                self._pinned.move_to_end(set_id)
            return model

    def cache_pinned(self, model: LoadedModel) -> None:
        with self._lock:
            self._pinned[model.record.id] = model
            while len(self._pinned) > 1 and _footprint(self._pinned.values()) > self._pinned_budget:
                self._pinned.popitem(last=False)

    def served_files(self) -> set[str]:
        """The files of every set served or wanted now (current, fallback, pinned): a bounded cache keeps them."""
        with self._lock:
            records = [slot.record for slot in self._slots.values() if slot.record is not None]
            records += [model.record for model in self._pinned.values()]
        return {file.relative_path for record in records for file in record.files}

    def pinned_ids(self) -> list[int]:
        with self._lock:
            return list(self._pinned)

    def evict_pinned(self, set_ids: Iterable[int]) -> list[int]:
        """Drops sets from the cache of pinned sets (retention archived them); returns those that were there."""
        with self._lock:
            return [set_id for set_id in set_ids if self._pinned.pop(set_id, None) is not None]


def _footprint(models: Iterable[LoadedModel]) -> int:
    return sum(m.record.artifact.size_bytes for m in models if m.record.artifact)
