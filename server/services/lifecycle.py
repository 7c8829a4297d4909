"""ModelLifecycleService: promote, roll back, and retention of old artifacts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from predserve.server.domain import PredictionSetRecord
from predserve.server.errors import ArtifactRejected, FailedPrecondition, InvalidArgument, NotFound
from predserve.server.model_store import LoadedModel
from predserve.server.services.registration import SetRegistrar, log_refused_collection
from predserve.server.services.validation import check_name
from predserve.server.storage.artifacts import ArtifactStore
from predserve.server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    model: LoadedModel
    previous_set_id: int


@dataclass(frozen=True)
class CollectedSet:
    record: PredictionSetRecord

    @property
    def size_bytes(self) -> int:
        return self.record.artifact.size_bytes if self.record.artifact else 0


@dataclass(frozen=True)
class Collection:
    sets: list[CollectedSet]
    dry_run: bool
    # Past retention, but refused by the artifact store (a path leading outside, a bad signature): not touched.
    # GarbageCollectResponse has no field for them yet; the log names each.
    refused: tuple[int, ...] = ()

    @property
    def bytes_freed(self) -> int:
        return sum(s.size_bytes for s in self.sets)


class ModelLifecycleService:
    def __init__(self, sets: PredictionSetRepository, artifacts: ArtifactStore, registrar: SetRegistrar) -> None:
        self.sets = sets
        self.artifacts = artifacts
        self.registrar = registrar

    def promote(self, set_id: int) -> Promotion:
        record = self._servable_record(set_id)
        previous = self._current_id(record.model_type)
        if previous == set_id:
            raise FailedPrecondition(f"prediction set {set_id} is already current for {record.model_type!r}")
        return Promotion(self.registrar.promote(record, "promote"), previous)

    def rollback(self, model_type: str) -> Promotion:
        check_name("model_type", model_type)
        previous_current = self._current_id(model_type)
        target = self.sets.previous_current(model_type)
        if target is None:
            if not self.sets.has_model_type(model_type):
                raise NotFound(f"unknown model type {model_type!r}")
            raise FailedPrecondition(f"model type {model_type!r} has no earlier current set to roll back to")
        record = self._servable_record(target)
        return Promotion(self.registrar.promote(record, "rollback"), previous_current)

    def collect_garbage(self, keep: int, dry_run: bool, model_type: str = "") -> Collection:
        """Deletes the artifacts of old non-current sets beyond the newest `keep` per type."""
        if keep < 1:
            raise InvalidArgument(f"keep must be at least 1 (got {keep}): the fallback candidate is always kept")
        types = [check_name("model_type", model_type)] if model_type else self.sets.model_types()
        beyond = [r for t in types for r in self._beyond_retention(t, keep)]
        doomed = [CollectedSet(r) for r in beyond if self._may_delete(r)]
        if not dry_run and doomed:
            doomed = [CollectedSet(r) for r in self.registrar.retire([c.record for c in doomed])]
            logger.info(
                "retention: archived %d set(s), freed %d bytes",
                len(doomed),
                sum(c.size_bytes for c in doomed),
            )
        collected = {c.record.id for c in doomed}
        return Collection(doomed, dry_run, tuple(r.id for r in beyond if r.id not in collected))

    def _may_delete(self, record: PredictionSetRecord) -> bool:
        """Whether the store accepts the row's path (and signature) with the checks loading applies; the
        dry run lists only what a real run would delete."""
        assert record.artifact is not None
        try:
            self.artifacts.locate(record.artifact, record.model_type)
        except ArtifactRejected as exc:
            log_refused_collection(record, exc)
            return False
        return True

    def _beyond_retention(self, model_type: str, keep: int) -> list[PredictionSetRecord]:
        """Non-current sets past the newest `keep`, never the fallback candidate. Pinned sets may go:
        the pin cache holds them in memory only. Reads only the sets past `keep` and the few newest older than the
        current set, whatever the history."""
        current = self.sets.current(model_type)
        fallback = self._fallback_candidate(model_type, None if current is None else current.id)
        return [r for r in self.sets.retained_beyond(model_type, keep) if r.id != fallback]

    def _fallback_candidate(self, model_type: str, current_id: int | None) -> int | None:
        """The set start-up would fall back to: the newest set older than the current one that verifies."""
        for record in self.sets.older_retained(model_type, current_id):
            assert record.artifact is not None
            try:
                self.artifacts.read_verified(record.artifact, record.model_type)
            except ArtifactRejected:
                continue
            return record.id
        return None

    def _current_id(self, model_type: str) -> int:
        current = self.sets.current(model_type)
        return 0 if current is None else current.id

    def _servable_record(self, set_id: int) -> PredictionSetRecord:
        if set_id <= 0:
            raise InvalidArgument(f"prediction_set_id {set_id} is not a valid id")
        record = self.sets.get(set_id)
        if record is None:
            raise NotFound(f"prediction set {set_id} does not exist")
        if record.archived_at:
            raise FailedPrecondition(
                f"prediction set {set_id} was archived on {record.archived_at}: its artifact is gone"
            )
        return record
