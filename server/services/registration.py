"""SetRegistrar: the one place where a prediction set is recorded and where the current set changes.

Training, import, promote, rollback and live reload all come through here, under one lock, so
that in this process the model in memory always agrees with the database on which set is
current. Across processes the database's unique index is the arbiter.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from server import failpoints
from server.domain import NewPredictionSet, PredictionSetRecord
from server.errors import Cancelled
from server.model_store import LoadedModel, ModelStore
from server.services.loading import ModelLoader
from server.storage.artifacts import ArtifactStore
from server.storage.database import PredictionSetRepository

logger = logging.getLogger(__name__)

# The held-out metric that decides "at least as good", per task; higher is better for both.
PRIMARY_METRIC = {"classification": "accuracy", "regression": "r2"}


class PromotionPolicy(enum.Enum):
    ALWAYS = "always"
    REGISTER_ONLY = "register_only"
    IF_BETTER = "if_better"


@dataclass(frozen=True)
class Registration:
    model: LoadedModel
    promoted: bool
    reason: str


def promotion_decision(
    policy: PromotionPolicy, new: NewPredictionSet, current: PredictionSetRecord | None
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
        self, sets: PredictionSetRepository, artifacts: ArtifactStore, loader: ModelLoader, store: ModelStore
    ) -> None:
        self.sets = sets
        self.artifacts = artifacts
        self.loader = loader
        self.store = store
        self.lock = threading.Lock()

    def register(
        self,
        new_set: NewPredictionSet,
        data_bytes: bytes,
        policy: PromotionPolicy,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> Registration:
        """Proves the written bytes load and answer, then records the set and, by policy, promotes it."""
        try:
            # Loading the very bytes on disk, not the fitted object, proves the artifact serves.
            pipeline = self.loader.load_bytes(data_bytes, new_set.self_check, f"new {new_set.model_type} artifact")
            with self.lock:
                if not still_wanted():
                    logger.warning("registration of %s abandoned: the caller is gone", new_set.model_type)
                    raise Cancelled(f"{new_set.model_type!r}: the caller is gone; nothing was recorded")
                current = next((r for r in self.sets.current_sets() if r.model_type == new_set.model_type), None)
                promote, reason = promotion_decision(policy, new_set, current)
                set_id = self.sets.insert(new_set, make_current=promote)
                failpoints.reach(failpoints.AFTER_COMMIT)
                record = self.sets.get(set_id)
                assert record is not None
                model = LoadedModel(record=record, pipeline=pipeline, load_seconds=0.0)
                if promote:
                    self.store.put(new_set.model_type, model)
                return Registration(model, promote, reason)
        except BaseException:
            if new_set.artifact.relative_path not in self.sets.artifact_paths():
                self.artifacts.discard(new_set.artifact.relative_path)
            raise

    def promote(self, record: PredictionSetRecord, reason: str) -> LoadedModel:
        """Verifies and loads a recorded set, makes it current in one transaction, swaps it in."""
        model = self.loader.load(record)
        with self.lock:
            self.sets.promote(record.id, reason)
            self.store.put(record.model_type, model)
        logger.info("%s: model type=%s set=%d is now current", reason, record.model_type, record.id)
        return model
