"""SetRegistrar: the one owner of an artifact's life, from a fitted or imported pipeline to a served set.

Training and import hand it a pipeline (or an imported file's bytes), a description and a promotion
policy; it writes the file, proves the written bytes load and answer, records the set, promotes it by
policy and swaps it into the model store, and deletes its own file if any step fails. Promote,
rollback and live reload change the current set through it too, under one lock, so that in this
process the model in memory always agrees with the database on which set is current. Across
processes the database's unique index is the arbiter.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predserve.server import failpoints
from predserve.server.domain import IMPORTED, ArtifactInfo, NewPredictionSet, PredictionSetRecord, SetDescription
from predserve.server.errors import ArtifactRejected, ArtifactStoreUnreachable, Cancelled, PredserveError
from predserve.server.model_store import LoadedModel, ModelStore, UnavailableModel
from predserve.server.services.catalog import PRIMARY_METRIC
from predserve.server.services.compilation import ProofEvidence, RuntimeBuilder
from predserve.server.services.loading import ModelLoader
from predserve.server.storage.artifacts import ArtifactStore
from predserve.server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)


class PromotionPolicy(enum.Enum):
    ALWAYS = "always"
    REGISTER_ONLY = "register_only"
    IF_BETTER = "if_better"


@dataclass(frozen=True)
class FittedPipeline:
    """A pipeline trained here, to be serialised with joblib, and what its compiled form is proven on."""

    pipeline: Any
    evidence: ProofEvidence


@dataclass(frozen=True)
class ArtifactBytes:
    """The bytes of a joblib file made elsewhere (ImportModel), stored as they are."""

    data: bytes
    evidence: ProofEvidence


Candidate = FittedPipeline | ArtifactBytes


@dataclass(frozen=True)
class Registration:
    model: LoadedModel
    promoted: bool
    reason: str


def promotion_decision(
    policy: PromotionPolicy, new: SetDescription, current: PredictionSetRecord | None
) -> tuple[bool, str]:
    if policy is PromotionPolicy.ALWAYS:
        return True, "promoted: policy is to always promote"
    if policy is PromotionPolicy.REGISTER_ONLY:
        return False, "registered without promotion, as asked"
    metric = PRIMARY_METRIC.get(new.task, "")
    if current is None or current.artifact is None:
        return True, "promoted: no current set with an artifact to compare with"
    if metric not in new.metrics:
        return False, f"not promoted: the new set has no held-out {metric or 'metric'}"
    if metric not in current.metrics:
        return True, f"promoted: current set {current.id} has no {metric} to compare with"
    new_value, current_value = new.metrics[metric], current.metrics[metric]
    if new_value >= current_value:
        return True, f"promoted: {metric} {new_value:.4f} >= {current_value:.4f} of current set {current.id}"
    return False, f"not promoted: {metric} {new_value:.4f} < {current_value:.4f} of current set {current.id}"


class SetRegistrar:
    def __init__(
        self,
        sets: PredictionSetRepository,
        artifacts: ArtifactStore,
        loader: ModelLoader,
        store: ModelStore,
        runtimes: RuntimeBuilder,
    ) -> None:
        self._sets = sets
        self._artifacts = artifacts
        self._loader = loader
        self._store = store
        self._runtimes = runtimes
        # Whether unsettled files (a Train that could not learn if it committed) may be in the models directory:
        # looked for once at start-up, then after each marking.
        self._unsettled = True
        self._lock = threading.Lock()

    def register(
        self,
        candidate: Candidate,
        description: SetDescription,
        policy: PromotionPolicy,
        still_wanted: Callable[[], bool] = lambda: True,
        commit_by: float | None = None,
    ) -> Registration:
        """Write, verify, record, promote by policy, swap; on any failure the written file is deleted. With
        `commit_by` (time.monotonic()), the set is recorded only if its transaction commits before then."""
        artifact, data = self._write(candidate, description.model_type)
        recording = False
        companion: ArtifactInfo | None = None  # the compiled form's file, once written
        try:
            # Loading the very bytes on disk, not the fitted object, proves the artifact serves.
            pipeline = self._loader.load_bytes(
                data, description.self_check, f"new {description.model_type} artifact", description.input_schema
            )
            runtime, runtime_record = self._runtimes.build(
                pipeline, description.task, description.self_check, candidate.evidence, artifact, description.model_type
            )
            companion = runtime_record.file
            with self._lock:
                if not still_wanted():
                    logger.warning("registration of %s abandoned: the caller is gone", description.model_type)
                    raise Cancelled(f"{description.model_type!r}: the caller is gone; nothing was recorded")
                new_set = NewPredictionSet.of(description, artifact, self._loader.environment, runtime_record)
                decision = _Decision(policy, description)
                recording = True
                record = self._sets.insert(
                    new_set, reason=_promotion_reason(description), promote_if=decision, commit_by=commit_by
                )
                promote, reason = decision.promote, decision.reason
                failpoints.reach(failpoints.AFTER_COMMIT)
                model = LoadedModel(record=record, pipeline=pipeline, load_seconds=0.0, runtime=runtime)
                if promote:
                    self._store.put(description.model_type, model)
                return Registration(model, promote, reason)
        except BaseException:
            self._discard_unrecorded(artifact, companion, ask_database=recording)
            raise

    def promote(self, record: PredictionSetRecord, reason: str) -> LoadedModel:
        """Verifies and loads a recorded set, makes it current in one transaction, swaps it in."""
        model = self._loader.load(record)
        with self._lock:
            self._sets.promote(record.id, reason)
            self._store.put(record.model_type, model)
        logger.info("%s: model type=%s set=%d is now current", reason, record.model_type, record.id)
        return model

    def adopt(self, model_type: str, set_id: int) -> LoadedModel | None:
        """Serves a set that another process made current; None when it is no longer current.

        A set that cannot be served leaves what is served in place (or marks a type this process has
        never served unavailable), and the error goes to the caller.
        """
        with self._lock:
            record = self._sets.current(model_type)
            if record is None or record.id != set_id:
                return None  # it changed again meanwhile; the next look sees the newest
            served = self._store.slots().get(model_type)
            if isinstance(served, LoadedModel) and served.record.id == set_id:
                # This process made it current while the caller was looking (a Train's commit, then its swap,
                # under this lock): there is nothing to load again, nor a reload to count.
                return None
            try:
                model = self._loader.load(record)
            except PredserveError as exc:
                if model_type not in self._store.slots():
                    waiting = isinstance(exc, ArtifactStoreUnreachable)
                    self._store.put(model_type, UnavailableModel(model_type, str(exc), record, waiting))
                raise
            self._store.put(model_type, model)
            return model

    def settle_unrecorded(self) -> list[str]:
        """Deletes the files of Trains that could not learn whether they committed, now that the database can
        say that no row names them; keeps those it names. Looks at the models directory only while some may be
        left (once at start, then after a marking). Returns the artifacts deleted."""
        if not self._unsettled:
            return []
        deleted = []
        for name, files in sorted(self._artifacts.unsettled().items()):
            recorded = self._sets.records_artifact(name)
            self._artifacts.settle(name, files, recorded)
            if not recorded:
                deleted.append(name)
                logger.info("deleted %s: its Train never committed (no set names it)", ", ".join(files))
        self._unsettled = False
        return deleted

    def retire(self, records: Sequence[PredictionSetRecord]) -> list[PredictionSetRecord]:
        """Marks sets that are not current archived (the rows stay), drops them from this process's cache of
        pinned sets, then deletes their artifacts. Archived first: from that commit on, every replica answers a
        pinned call for them alike (each drops them on the announcement, and the loader refuses archived rows),
        whatever a deletion does next. A set promoted meanwhile is left whole. The caller checked each row's
        paths (`ArtifactStore.locate`); a file refused now is logged and left. Returns the sets retired."""
        archived = self._sets.archive([record.id for record in records])
        self._store.evict_pinned(archived)
        retired = [record for record in records if record.id in archived]
        for record in retired:
            compiled = record.runtime.file if record.runtime is not None else None
            try:
                for file in filter(None, (record.artifact, compiled)):
                    self._artifacts.discard_recorded(file, record.model_type)
            except ArtifactRejected as exc:
                log_refused_collection(record, exc)
        return retired

    def scratch_copy(self, data: bytes) -> AbstractContextManager[Path]:
        """A temporary file of `data` in the artifact store, for a probe process to load; removed on exit."""
        return self._artifacts.scratch_file(data)

    def _write(self, candidate: Candidate, model_type: str) -> tuple[ArtifactInfo, bytes]:
        if isinstance(candidate, FittedPipeline):
            return self._artifacts.write(candidate.pipeline, model_type)
        return self._artifacts.write_bytes(candidate.data, model_type)

    def _discard_unrecorded(self, artifact: ArtifactInfo, companion: ArtifactInfo | None, ask_database: bool) -> None:
        """Deletes a file this registration wrote and no row names. Once the insert was attempted only
        the database knows whether it committed (a connection can drop during COMMIT): if it cannot
        say, the files are marked unsettled, and deleted by `settle_unrecorded` once it can and no row
        names them; `recover` never makes a set of them."""
        if ask_database:
            try:
                if self._sets.records_artifact(artifact.relative_path):
                    return
            except PredserveError as exc:
                logger.warning(
                    "artifact %s: cannot tell whether it was recorded (%s); it is deleted once the database "
                    "answers that no set names it",
                    artifact.relative_path,
                    exc,
                )
                self._artifacts.mark_unsettled([file for file in (artifact, companion) if file is not None])
                self._unsettled = True
                return
        for written in filter(None, (artifact, companion)):
            try:
                self._artifacts.discard(written.relative_path)
            except ArtifactRejected as exc:  # not for a name write_bytes made; never mask the original error
                logger.warning("keeping artifact %r: %s", written.relative_path, exc)


def log_refused_collection(record: PredictionSetRecord, exc: ArtifactRejected) -> None:
    path = record.artifact.relative_path if record.artifact else None
    logger.warning(
        "garbage collection skips set %d: its artifact path %r is refused (%s); no file is touched and the set "
        "is not archived",
        record.id,
        path,
        exc,
    )


class _Decision:
    """The promotion decision, taken by the repository inside the insert's transaction (see insert)."""

    def __init__(self, policy: PromotionPolicy, description: SetDescription) -> None:
        self.policy = policy
        self.description = description
        self.promote = False
        self.reason = ""

    def __call__(self, current: PredictionSetRecord | None) -> bool:
        self.promote, self.reason = promotion_decision(self.policy, self.description, current)
        return self.promote


def _promotion_reason(description: SetDescription) -> str:
    return "import" if description.origin == IMPORTED else "train"
