"""PredictionService: answers with the current (or a pinned) pipeline of a model type.

gRPC, the client library and in-process callers all come through here; it knows nothing of any
transport, so another Python service may import and call it directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn

from predserve.server.domain import TargetValue
from predserve.server.errors import (
    ErrorKind,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PredserveError,
    Unavailable,
)
from predserve.server.model_store import LoadedModel, ModelStore
from predserve.server.observability.telemetry import Telemetry
from predserve.server.runtimes.domain import OutsideDomain, locate_refusal
from predserve.server.services.batching import Answer, MicroBatcher
from predserve.server.services.input_tables import (
    InputTable,
    columns_frame,
    refusal_message,
    rows_refused,
    table_columns,
    table_matrix,
)
from predserve.server.services.loading import ModelLoader
from predserve.server.services.validation import check_finite, check_name, check_row_limit, feature_matrix
from predserve.server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)

# How the metrics name an answer the pipeline itself computed.
SKLEARN = "sklearn"


@dataclass(frozen=True)
class PredictionResult:
    model_type: str
    prediction_set_id: int
    values: list[TargetValue]
    # Per-row class probabilities in the order of `classes`, when asked for.
    probabilities: np.ndarray | None
    classes: list[TargetValue]
    artifact_sha256_prefix: str


@dataclass(frozen=True)
class ModelDescription:
    """What a caller needs to know to call predict: the set that would answer, its inputs and outputs."""

    model_type: str
    prediction_set_id: int
    feature_names: tuple[str, ...]
    # Class labels of a classifier, in the order of its probabilities; None for a regressor.
    classes: tuple[TargetValue, ...] | None
    gives_probabilities: bool
    # What answers: a compiled form's runtime and version, or "sklearn"; and the proof that let it.
    runtime: str = "sklearn"
    runtime_version: str = ""
    runtime_rows_checked: int = 0
    runtime_max_deviation: float = 0.0
    # The model described, so that a caller can predict with this very one (answer) without resolving again.
    model: LoadedModel | None = field(default=None, compare=False, repr=False)


class PredictionService:
    def __init__(
        self,
        store: ModelStore,
        sets: PredictionSetRepository,
        loader: ModelLoader,
        max_rows: int | None = None,
        batcher: MicroBatcher | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.sets = sets
        self.loader = loader
        self.max_rows = max_rows
        # Off unless given: the server turns it on (--batch-max-rows), in-process callers may too.
        self.batcher = batcher or MicroBatcher(max_rows=0)
        self._pin_lock = threading.Lock()
        self.telemetry = telemetry or Telemetry()

    def predict(
        self,
        model_type: str,
        rows: Sequence[Sequence[float]] | np.ndarray | InputTable,
        prediction_set_id: int = 0,
        include_probabilities: bool = False,
    ) -> PredictionResult:
        """Rows of numbers in the order of a numbers-only model's inputs, or a table of named, typed columns
        matched to the model's input schema by name."""
        check_row_limit("the request", _count(rows), self.max_rows)  # before anything else, whatever the model
        model = self.resolve_model(model_type, prediction_set_id)
        return self._answer(model, rows, include_probabilities)

    def answer(
        self,
        model: LoadedModel,
        rows: Sequence[Sequence[float]] | np.ndarray | InputTable,
        include_probabilities: bool = False,
    ) -> PredictionResult:
        """Predicts with a model already resolved by describe (V2's ModelInfer), so it is resolved once."""
        check_row_limit("the request", _count(rows), self.max_rows)
        return self._answer(model, rows, include_probabilities)

    def _answer(
        self,
        model: LoadedModel,
        rows: Sequence[Sequence[float]] | np.ndarray | InputTable,
        include_probabilities: bool,
    ) -> PredictionResult:
        if not isinstance(rows, InputTable):
            return self._run(model, self._features(model, rows), include_probabilities)
        schema, model_type = model.schema, model.record.model_type
        if schema.numeric:
            return self._run(model, table_matrix(model_type, schema, rows), include_probabilities)
        columns = table_columns(model_type, schema, rows)
        try:
            answer = _compiled_answer(model, columns, rows.rows, include_probabilities, self.telemetry)
        except OutsideDomain:
            # A row the pipeline refuses too (its proof checked that): the pipeline is asked, so that the caller
            # gets the pipeline's own refusal, worded as every typed refusal is. A refusal costs a pipeline call.
            answer = None
        if answer is not None:
            return self._result(model, answer, rows.rows, model.runtime.name if model.runtime else SKLEARN)
        return self._run_frame(model, columns_frame(columns), include_probabilities)

    def describe(self, model_type: str, prediction_set_id: int = 0) -> ModelDescription:
        model = self.resolve_model(model_type, prediction_set_id)
        record = model.record
        return ModelDescription(
            model_type=record.model_type,
            prediction_set_id=record.id,
            feature_names=record.feature_names,
            classes=record.classes,
            gives_probabilities=hasattr(model.pipeline, "predict_proba"),
            model=model,
            **_runtime_fields(model),
        )

    def is_ready(self, model_type: str, prediction_set_id: int = 0) -> bool:
        """Whether predict would find a loaded, verified model; a malformed name is still an error."""
        try:
            self.resolve_model(model_type, prediction_set_id)
        except PredserveError as exc:
            if exc.kind in (ErrorKind.NOT_FOUND, ErrorKind.FAILED_PRECONDITION, ErrorKind.UNAVAILABLE):
                return False
            raise
        return True

    def server_ready(self) -> bool:
        """True once start-up loading has filled the store and the store agrees with the database."""
        return self.store.startup_loaded and self.store.not_synced_reason is None

    def resolve_model(self, model_type: str, prediction_set_id: int = 0) -> LoadedModel:
        check_name("model_type", model_type)
        not_synced = self.store.not_synced_reason
        if not_synced is not None:
            # UNAVAILABLE, not NOT_FOUND or an old set: a client retries it on another server or worker.
            raise Unavailable(f"this server has not synced with the registry database yet: {not_synced}")
        if prediction_set_id == 0:
            return self.store.current(model_type)
        if prediction_set_id < 0:
            raise InvalidArgument(f"prediction_set_id {prediction_set_id} is negative")
        return self._pinned(model_type, prediction_set_id)

    def _pinned(self, model_type: str, set_id: int) -> LoadedModel:
        model = self.store.pinned(set_id)
        if model is None:
            with self._pin_lock:  # one load per set, however many callers ask for it at once
                model = self.store.pinned(set_id) or self._load_pinned(set_id)
        if model.record.model_type != model_type:
            raise NotFound(
                f"prediction set {set_id} belongs to model type {model.record.model_type!r}, not {model_type!r}"
            )
        return model

    def _load_pinned(self, set_id: int) -> LoadedModel:
        record = self.sets.get(set_id)
        if record is None:
            raise NotFound(f"prediction set {set_id} does not exist")
        model = self.loader.load(record)
        self.store.cache_pinned(model)
        return model

    @staticmethod
    def _features(model: LoadedModel, rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        if not model.schema.numeric:
            raise rows_refused(model.record.model_type, model.schema)
        expected = model.n_features
        if isinstance(rows, np.ndarray):
            if rows.ndim != 2 or rows.shape[0] == 0:
                raise InvalidArgument(f"expected a non-empty [rows, {expected}] matrix, got shape {list(rows.shape)}")
            if rows.shape[1] != expected:
                raise InvalidArgument(f"rows have {rows.shape[1]} features, model type expects {expected}")
            check_finite(rows)
            return rows
        return feature_matrix(rows, expected)

    def _run(self, model: LoadedModel, features: np.ndarray, include_probabilities: bool) -> PredictionResult:
        record = model.record
        classes = list(record.classes or [])
        if include_probabilities and not hasattr(model.pipeline, "predict_proba"):
            raise FailedPrecondition(
                f"model type {record.model_type!r} ({record.algorithm}) does not give probabilities"
            )
        try:
            answer = _compiled_answer(model, features, len(features), include_probabilities, self.telemetry)
            if answer is None:
                answer = self.batcher.run(model.pipeline, features, include_probabilities, _predict)
                answered_by = SKLEARN
            else:
                answered_by = model.runtime.name if model.runtime is not None else SKLEARN
        except OutsideDomain as refusal:
            raise InvalidArgument(_refusal_message(refusal, record.feature_names)) from refusal
        self.telemetry.rows_predicted(record.model_type, len(features), answered_by)
        labels, probabilities = answer
        values: list[Any] = labels.tolist()
        return PredictionResult(
            model_type=record.model_type,
            prediction_set_id=record.id,
            values=values,
            probabilities=probabilities,
            classes=classes,
            artifact_sha256_prefix=model.sha256_prefix,
        )

    def _run_frame(self, model: LoadedModel, frame: Any, include_probabilities: bool) -> PredictionResult:
        """A typed pipeline's answer for a DataFrame. Not micro-batched: the batcher joins float64 matrices, and a
        typed pipeline's per-call cost would be paid per call anyway until it has a compiled form."""
        record = model.record
        if include_probabilities and not hasattr(model.pipeline, "predict_proba"):
            raise FailedPrecondition(
                f"model type {record.model_type!r} ({record.algorithm}) does not give probabilities"
            )
        return self._result(model, _predict_frame(model, frame, include_probabilities), len(frame), SKLEARN)

    def _result(self, model: LoadedModel, answer: Answer, rows: int, answered_by: str) -> PredictionResult:
        record = model.record
        labels, probabilities = answer
        self.telemetry.rows_predicted(record.model_type, rows, answered_by)
        return PredictionResult(
            model_type=record.model_type,
            prediction_set_id=record.id,
            values=labels.tolist(),
            probabilities=probabilities,
            classes=list(record.classes or []),
            artifact_sha256_prefix=model.sha256_prefix,
        )


def _count(rows: Sequence[Sequence[float]] | np.ndarray | InputTable) -> int:
    return rows.rows if isinstance(rows, InputTable) else len(rows)


def _predict_frame(model: LoadedModel, frame: Any, include_probabilities: bool) -> Answer:
    """The pipeline's answer for a DataFrame; a ValueError it raises on the caller's values becomes an
    InvalidArgument naming the row and the column it could not take."""
    try:
        return _predict(model.pipeline, frame, include_probabilities, locate=False)
    except ValueError as exc:

        def refuses(part: Any) -> bool:
            try:
                _predict(model.pipeline, part, False, locate=False)
            except ValueError:
                return True
            return False

        message = refusal_message(model.pipeline, model.schema, frame, refuses, exc)
        if message is None:
            raise
        raise InvalidArgument(message) from exc


def _runtime_fields(model: LoadedModel) -> dict[str, Any]:
    recorded = model.record.runtime
    if model.runtime is None or recorded is None:
        return {}
    return {
        "runtime": model.runtime.name,
        "runtime_version": model.runtime.version,
        "runtime_rows_checked": recorded.rows_checked,
        "runtime_max_deviation": recorded.max_deviation,
    }


class _Count:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


# Calls a compiled form failed and the pipeline answered instead, since start-up.
runtime_fallbacks = _Count()


def _compiled_answer(
    model: LoadedModel, inputs: Any, rows: int, include_probabilities: bool, telemetry: Telemetry
) -> Answer | None:
    """The compiled form's answer for `rows` rows (a float64 matrix, or a typed set's named columns), computed
    once for labels and probabilities; None when the pipeline must answer: there is no compiled form, or it
    raised, which is logged and counted and never fails the call. OutsideDomain (a row the pipeline refuses
    too) passes to the caller.

    A compiled answer costs microseconds, so it is never micro-batched: waiting for others would cost more.
    A call larger than the runtime's `most_rows` goes to the pipeline, which is faster there.
    """
    runtime = model.runtime
    if runtime is None or (runtime.most_rows is not None and rows > runtime.most_rows):
        return None
    try:
        if include_probabilities:
            return runtime.predict_both(inputs)
        return runtime.predict(inputs), None
    except OutsideDomain:  # a row the pipeline refuses too: the call's answer, not the form's failure
        raise
    except Exception:  # whatever else a runtime raises, the pipeline still answers the call
        runtime_fallbacks.add()
        telemetry.runtime_failed(model.record.model_type)
        logger.exception("the %s form of set %d raised; the pipeline answers this call", runtime.name, model.record.id)
        return None


def _predict(pipeline: Any, features: Any, include_probabilities: bool, locate: bool = True) -> Answer:
    """The pipeline's own predict (and predict_proba), hyper-parameter validation skipped (they were validated
    when it was fitted). Its input checks stay: a finite row can become infinite inside the pipeline, and
    refusing it there is the pipeline's answer, which OutsideDomain then locates for the caller.
    """
    try:
        with sklearn.config_context(skip_parameter_validation=True):
            probabilities = pipeline.predict_proba(features) if include_probabilities else None
            return np.asarray(pipeline.predict(features)), probabilities
    except ValueError as exc:
        if not locate:  # a DataFrame: _predict_frame locates the refusal by column name
            raise
        refusal = locate_refusal(pipeline, features)
        if refusal is None:
            raise
        raise refusal from exc


def _refusal_message(refusal: OutsideDomain, feature_names: Sequence[str]) -> str:
    assert isinstance(refusal.feature, int)  # rows' refusals; a typed table's are worded by its pipeline's path
    name = f" ({feature_names[refusal.feature]!r})" if refusal.feature < len(feature_names) else ""
    return (
        f"row {refusal.row}, feature {refusal.feature}{name}: {refusal.value!r} is outside what the pipeline "
        f"accepts: {refusal.why}"
    )
