"""Turning recorded prediction sets into servable models, at start-up and on demand."""

from __future__ import annotations

import logging
import pickle
import platform
import time
from typing import Any

import numpy as np

from predserve.server.domain import PredictionSetRecord, Schema, SelfCheck, VersionPolicy
from predserve.server.errors import ArtifactRejected, ArtifactStoreUnreachable, FailedPrecondition
from predserve.server.model_store import LoadedModel, ModelStore, UnavailableModel
from predserve.server.observability.telemetry import Telemetry
from predserve.server.services.compilation import RuntimeBuilder
from predserve.server.services.pipeline_inputs import pipeline_input
from predserve.server.storage.artifacts import ArtifactStore, load_pipeline
from predserve.server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)


def environment_fingerprint() -> dict[str, str]:
    """Versions that decide whether a pickle made here loads and behaves the same elsewhere."""
    import joblib
    import scipy
    import sklearn

    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "joblib": joblib.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def fingerprint_mismatch(recorded: dict[str, str], running: dict[str, str]) -> str:
    """A readable list of the versions that differ, or '' when they all match."""
    differences = [
        f"{name} {recorded[name]} at training, {running.get(name, '?')} now"
        for name in sorted(recorded)
        if recorded[name] != running.get(name)
    ]
    return "; ".join(differences)


def self_check_passes(pipeline: Any, check: SelfCheck, schema: Schema | None = None) -> bool:
    """Whether the pipeline still gives the answers it gave to the held-out sample at training; a typed set's
    rows (strings, None) go to it as the DataFrame of its input schema."""
    if not check.inputs:
        return True
    answers = pipeline.predict(pipeline_input(schema, check.inputs)).tolist()
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in check.outputs):
        return bool(np.allclose(np.asarray(answers, dtype=np.float64), check.outputs, rtol=1e-9, atol=1e-12))
    return [str(value) for value in answers] == [str(value) for value in check.outputs]


class ModelLoader:
    def __init__(
        self,
        artifacts: ArtifactStore,
        sets: PredictionSetRepository,
        version_policy: VersionPolicy = VersionPolicy.WARN,
        trusted_modules: tuple[str, ...] = (),
        runtimes: RuntimeBuilder | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.artifacts = artifacts
        # Gives each loaded set its compiled form, verified and proven again; without it the pipeline answers.
        self.runtimes = runtimes
        self.sets = sets
        self.version_policy = version_policy
        # Modules besides scikit-learn, NumPy and SciPy whose classes an artifact may name (--trusted-module).
        self.trusted_modules = trusted_modules
        self.environment = environment_fingerprint()
        self.telemetry = telemetry or Telemetry()

    def load(self, record: PredictionSetRecord, note: str = "", fallback_for: int | None = None) -> LoadedModel:
        """Loads a set's verified artifact and proves it answers as it did at training."""
        if record.artifact is None:
            raise FailedPrecondition(
                f"prediction set {record.id} has no artifact (a Phase-4 set): this model type needs training"
            )
        if record.archived_at:
            raise FailedPrecondition(f"prediction set {record.id} was archived by retention: its artifact is gone")
        mismatch = fingerprint_mismatch(record.environment, self.environment)
        if mismatch and self.version_policy is VersionPolicy.REFUSE:
            raise ArtifactRejected(f"prediction set {record.id} was trained in another environment: {mismatch}")
        started = time.perf_counter()
        data = self.artifacts.read_verified(record.artifact, record.model_type)
        pipeline = self.load_bytes(
            data, record.self_check, f"artifact of prediction set {record.id}", record.input_schema
        )
        runtime, runtime_problem = (
            (None, "") if self.runtimes is None else self.runtimes.load(record, pipeline, same_environment=not mismatch)
        )
        if runtime_problem:
            logger.warning("model type %s, set %d: %s", record.model_type, record.id, runtime_problem)
        elapsed = time.perf_counter() - started
        self.telemetry.model_loaded(record.model_type, elapsed)
        if mismatch:
            note = "; ".join(filter(None, [note, f"version mismatch: {mismatch}"]))
        note = "; ".join(filter(None, [note, runtime_problem]))
        return LoadedModel(
            record=record,
            pipeline=pipeline,
            load_seconds=elapsed,
            note=note,
            fallback_for=fallback_for,
            runtime=runtime,
        )

    def load_bytes(self, data: bytes, check: SelfCheck | None, label: str, schema: Schema | None = None) -> Any:
        """Unpickles verified bytes through the allow-list and proves the result answers as it did at training."""
        try:
            pipeline = load_pipeline(data, self.trusted_modules)
        except pickle.UnpicklingError as exc:  # ForbiddenGlobal among them: its text names the global
            raise ArtifactRejected(f"{label} does not unpickle: {exc}") from exc
        except Exception as exc:  # a corrupt pickle can raise nearly anything
            raise ArtifactRejected(f"{label} does not unpickle: {exc!r}") from exc
        if not hasattr(pipeline, "predict"):
            raise ArtifactRejected(f"{label} holds no object with predict()")
        if check is None:
            return pipeline
        try:
            passes = self_check_passes(pipeline, check, schema)
        except Exception as exc:  # an impostor object may take other inputs or answer in other types
            raise ArtifactRejected(f"{label} fails its self-check: predict raised {exc!r}") from exc
        if not passes:
            raise ArtifactRejected(f"{label} fails its self-check: it no longer gives the answers recorded at training")
        return pipeline

    def load_current_models(self, store: ModelStore) -> None:
        """Fills the store with the current set of every model type, falling back where one is broken."""
        current = {record.model_type: record for record in self.sets.current_sets()}
        # From an object store, what the cache lacks comes side by side rather than one set after another.
        self.artifacts.prefetch([file for record in current.values() for file in record.files])
        for model_type in self.sets.model_types():
            store.put(model_type, self._load_model_type(model_type, current.get(model_type)))

    def _load_model_type(self, model_type: str, current: PredictionSetRecord | None) -> LoadedModel | UnavailableModel:
        if current is None:
            logger.warning("model type %s has no current prediction set: it needs training", model_type)
            return UnavailableModel(model_type, "no current prediction set: train this model type")
        if current.artifact is None:
            logger.warning(
                "model type %s: current prediction set %d predates artifacts (Phase 4): it needs training",
                model_type,
                current.id,
            )
            return UnavailableModel(
                model_type,
                f"current prediction set {current.id} predates artifacts: this model type needs training",
                current,
            )
        try:
            model = self.load(current)
        except ArtifactStoreUnreachable as exc:  # not refused: an older set would change the answers meanwhile
            logger.error(
                "model type %s is NOT_SERVING until set %d can be fetched: %s",
                model_type,
                current.id,
                exc,
                extra={"event": "fetch_waiting", "model_type": model_type, "prediction_set_id": current.id},
            )
            return UnavailableModel(model_type, f"set {current.id} waits for the artifact store: {exc}", current, True)
        except (ArtifactRejected, FailedPrecondition) as exc:
            logger.error("REFUSED current artifact of model type %s (set %d): %s", model_type, current.id, exc)
            return self._fall_back(model_type, current, str(exc))
        _log_loaded(model)
        return model

    def _fall_back(self, model_type: str, current: PredictionSetRecord, reason: str) -> LoadedModel | UnavailableModel:
        for older in self.sets.older_retained(model_type, current.id):
            note = f"FALLBACK: current set {current.id} refused ({reason}); serving older set {older.id}"
            try:
                model = self.load(older, note=note, fallback_for=current.id)
            except (ArtifactRejected, FailedPrecondition) as exc:
                logger.error("older set %d of model type %s refused too: %s", older.id, model_type, exc)
                continue
            logger.error(
                "model type %s %s",
                model_type,
                note,
                extra={
                    "event": "fallback",
                    "model_type": model_type,
                    "prediction_set_id": older.id,
                    "refused_prediction_set_id": current.id,
                },
            )
            _log_loaded(model)
            return model
        logger.error("model type %s is unavailable: no prediction set verifies", model_type)
        return UnavailableModel(model_type, f"current set {current.id} refused: {reason}", current)


def _log_loaded(model: LoadedModel) -> None:
    record = model.record
    assert record.artifact is not None
    logger.info(
        "loaded model type=%s set=%d path=%s load_time=%.3fs%s",
        record.model_type,
        record.id,
        record.artifact.relative_path,
        model.load_seconds,
        f" ({model.note})" if model.note else "",
        extra={
            "event": "fallback_loaded" if model.is_fallback else "loaded",
            "model_type": record.model_type,
            "prediction_set_id": record.id,
            "path": record.artifact.relative_path,
            "duration_ms": round(model.load_seconds * 1000, 3),
            "runtime": model.runtime.name if model.runtime is not None else "sklearn",
        },
    )
