"""ModelTrainingService: fit a recipe, persist the pipeline, make it current, serve it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import InvalidParameterError

from predserve.server import failpoints
from predserve.server.domain import HistoryRow, Schema, SelfCheck, SetDescription, TargetValue, TypedDataset
from predserve.server.errors import Cancelled, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from predserve.server.model_store import LoadedModel
from predserve.server.observability.telemetry import Telemetry, TrainEnd
from predserve.server.options import flag_of
from predserve.server.services.admission import FitCores, WorkSlots
from predserve.server.services.catalog import (
    ACCURACY,
    CATALOG,
    CLASSIFICATION,
    F1_MACRO,
    HOLDOUT_ROWS,
    MAE,
    R2,
    RMSE,
    Recipe,
    find_recipe,
    parse_params,
)
from predserve.server.services.compilation import ProofEvidence
from predserve.server.services.pipeline_inputs import rows_of_frame
from predserve.server.services.registration import FittedPipeline, PromotionPolicy, Registration, SetRegistrar
from predserve.server.services.validation import (
    check_feature_names,
    check_finite,
    check_name,
    check_row_limit,
    check_targets,
    feature_matrix,
)
from predserve.server.storage.history import DatasetColumns, HistoryRepository

logger = logging.getLogger(__name__)

MIN_TRAINING_ROWS = 10
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 42
SELF_CHECK_ROWS = 5
# What a Train leaves between its commit and its caller's deadline, for the answer to get back: a set committed
# later could reach a caller who already has DEADLINE_EXCEEDED, and who would train again.
COMMIT_MARGIN_SECONDS = 0.25


@dataclass(frozen=True)
class TrainCommand:
    model_type: str
    algorithm: str = ""
    dataset: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    rows: Sequence[HistoryRow] = ()
    feature_names: Sequence[str] = ()
    test_fraction: float = 0.0
    random_seed: int = 0
    promotion: PromotionPolicy = PromotionPolicy.ALWAYS
    # Asked before the artifact is written and before the commit: a Train nobody waits for any more
    # (deadline passed, cancelled, server stopping) must not become the current model.
    still_wanted: Callable[[], bool] = field(default=lambda: True, compare=False)


@dataclass(frozen=True)
class TrainOutcome:
    registration: Registration
    persist_seconds: float

    @property
    def model(self) -> LoadedModel:
        return self.registration.model


@dataclass(frozen=True)
class TrainDeadline:
    """When a Train must be done. A fit cannot be interrupted, so this is checked before and after it:
    a Train past its deadline records nothing, and its caller never finds a model it gave up on."""

    expires_at: float
    description: str

    @classmethod
    def start(cls, limit_seconds: float | None, caller_seconds: float | None) -> TrainDeadline | None:
        now = time.monotonic()
        if caller_seconds is not None and (limit_seconds is None or caller_seconds < limit_seconds):
            return cls(now + caller_seconds, f"the caller's deadline of {caller_seconds:g}s")
        if limit_seconds is not None:
            return cls(now + limit_seconds, f"the limit of {limit_seconds:g}s per Train (--train-deadline-seconds)")
        return None

    def check(self, stage: str) -> None:
        if time.monotonic() > self.expires_at:
            raise ResourceExhausted(f"Train ran past {self.description} {stage}; nothing was recorded")

    @property
    def commit_by(self) -> float:
        """When the set's transaction must have committed: early enough for the answer to reach the caller."""
        return self.expires_at - COMMIT_MARGIN_SECONDS


@dataclass(frozen=True)
class _TrainingData:
    dataset: str
    # A float64 matrix, or for a typed dataset (strings or missing values) a DataFrame of its schema's columns.
    features: np.ndarray | pd.DataFrame
    targets: np.ndarray
    feature_names: tuple[str, ...]
    # The inputs of a typed dataset's pipeline (by name); None for the matrix.
    schema: Schema | None = None


class ModelTrainingService:
    def __init__(
        self,
        history: HistoryRepository,
        registrar: SetRegistrar,
        max_rows: int | None = None,
        time_limit_seconds: float | None = None,
        slots: WorkSlots | None = None,
        cores: FitCores | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.history = history
        self.registrar = registrar
        self.max_rows = max_rows
        self.time_limit_seconds = time_limit_seconds
        self.slots = slots or WorkSlots(2, "Trains and imports", flag_of("max_concurrent_trains"))
        self.cores = cores or FitCores(1)
        self.telemetry = telemetry or Telemetry()

    def train(self, command: TrainCommand, caller_seconds: float | None = None) -> TrainOutcome:
        """Fits, persists and serves; `caller_seconds` is how long the caller will wait, if it said."""
        started = time.perf_counter()
        end = TrainEnd.FAILED
        try:
            outcome = self._train(command, caller_seconds)
            end = TrainEnd.PROMOTED if outcome.registration.promoted else TrainEnd.REGISTERED
            return outcome
        finally:
            self.telemetry.train_finished(command.model_type, end, time.perf_counter() - started)

    def _train(self, command: TrainCommand, caller_seconds: float | None) -> TrainOutcome:
        deadline = TrainDeadline.start(self.time_limit_seconds, caller_seconds)
        check_row_limit("the request", len(command.rows), self.max_rows)
        model_type = check_name("model_type", command.model_type)
        recipe = find_recipe(command.algorithm or _default_algorithm(model_type))
        params = self.cores.cap(parse_params(recipe, command.params))
        test_fraction = _test_fraction(command.test_fraction)
        seed = _seed(command.random_seed)
        with self.slots.taken():
            data = self._training_data(command)
            _check_targets(recipe, data.targets)
            split = _split(recipe, data, test_fraction, seed)
            if deadline is not None:
                deadline.check("before fitting")
            pipeline, fit_seconds = self._fit(recipe, params, seed, split, data)
            _check_wanted(command)
            if deadline is not None:
                deadline.check(f"after a fit of {fit_seconds:.2f}s")
            sample = _rows(split.x_test)[:SELF_CHECK_ROWS]
            description = SetDescription(
                model_type=model_type,
                dataset=data.dataset,
                algorithm=recipe.name,
                task=recipe.task,
                params=params,
                metrics=_evaluate(recipe, pipeline, split),
                feature_names=data.feature_names,
                classes=tuple(pipeline.classes_.tolist()) if recipe.task == CLASSIFICATION else None,
                training_rows=len(data.targets),
                fit_seconds=fit_seconds,
                self_check=SelfCheck(_self_check_rows(sample), pipeline.predict(sample).tolist()),
                input_schema=data.schema,
            )
            evidence = (
                ProofEvidence.for_typed(data.schema, split.x_test)
                if data.schema is not None
                else ProofEvidence.of(np.asarray(split.x_test), np.asarray(split.x_train))
            )
            commit_by = deadline.commit_by if deadline is not None else None
            return self._register(command, FittedPipeline(pipeline, evidence), description, commit_by)

    def _fit(
        self, recipe: Recipe, params: dict[str, Any], seed: int, split: _Split, data: _TrainingData
    ) -> tuple[Any, float]:
        dataset = data.dataset
        pipeline = recipe.build(params, seed, data.schema)
        started = time.perf_counter()
        try:
            failpoints.reach(failpoints.DURING_FIT)
            with self.cores.limited():
                pipeline.fit(split.x_train, split.y_train)
        except InvalidParameterError as exc:
            raise InvalidArgument(f"invalid parameter for algorithm {recipe.name}: {exc}") from exc
        except ValueError as exc:
            raise FailedPrecondition(f"algorithm {recipe.name} cannot fit dataset {dataset}: {exc}") from exc
        return pipeline, time.perf_counter() - started

    def _register(
        self, command: TrainCommand, fitted: FittedPipeline, description: SetDescription, commit_by: float | None
    ) -> TrainOutcome:
        started = time.perf_counter()
        registration = self.registrar.register(
            fitted, description, command.promotion, command.still_wanted, commit_by=commit_by
        )
        persist_seconds = time.perf_counter() - started
        record = registration.model.record
        logger.info(
            "trained model type=%s set=%d algorithm=%s rows=%d fit=%.3fs persist=%.3fs path=%s metrics=%s (%s)",
            record.model_type,
            record.id,
            record.algorithm,
            description.training_rows,
            description.fit_seconds,
            persist_seconds,
            record.artifact.relative_path if record.artifact else "",
            description.metrics,
            registration.reason,
        )
        return TrainOutcome(registration=registration, persist_seconds=persist_seconds)

    def _training_data(self, command: TrainCommand) -> _TrainingData:
        if command.rows:
            features = feature_matrix([row.features for row in command.rows])
            targets = [row.target for row in command.rows]
            check_targets(targets)
            return _TrainingData("(inline)", features, np.asarray(targets), _names(command.feature_names, features))
        dataset_name = check_name("dataset", command.dataset)
        # A typed dataset (strings, or missing values) fits a typed pipeline; any other the float64 matrix, as always.
        table = self.history.load_table(dataset_name) if self.history.is_typed(dataset_name) else None
        if table is not None:
            return _from_table(dataset_name, table, command.feature_names)
        columns = self.history.load_columns(dataset_name)
        if columns is not None:
            return _from_columns(columns, command.feature_names)
        # No binary copy of every row (rows written before there was one): each row's JSON, as in Phase 4.
        dataset = self.history.load(dataset_name)
        if dataset is None:
            raise NotFound(f"dataset {dataset_name!r} has no rows in data_history; ingest it first")
        try:
            features = feature_matrix(dataset.features)
        except InvalidArgument as exc:
            raise FailedPrecondition(f"dataset {dataset_name!r} is not usable: {exc}") from exc
        names = _names(command.feature_names or dataset.feature_names, features)
        return _TrainingData(dataset_name, features, _target_array(dataset.targets), names)


def _from_columns(columns: DatasetColumns, feature_names: Sequence[str]) -> _TrainingData:
    """The same data, checks and errors as the JSON rows give, from the matrix the binary copy fills."""
    try:
        check_finite(columns.features)
    except InvalidArgument as exc:
        raise FailedPrecondition(f"dataset {columns.name!r} is not usable: {exc}") from exc
    targets = columns.targets if isinstance(columns.targets, np.ndarray) else _target_array(columns.targets)
    names = _names(feature_names or columns.feature_names, columns.features)
    return _TrainingData(columns.name, columns.features, targets, names)


def _from_table(dataset: str, table: TypedDataset, feature_names: Sequence[str]) -> _TrainingData:
    """A typed dataset as its pipeline fits on it: the DataFrame, its columns named by the dataset's schema."""
    names = table.schema.names
    if feature_names and tuple(feature_names) != names:
        raise InvalidArgument(
            f"dataset {dataset!r} names its columns by its schema ({', '.join(names)}); feature_names cannot "
            "rename them"
        )
    # The pipeline's input schema: the dataset's columns, taken by name.
    schema = Schema(table.schema.columns, by_name=True)
    return _TrainingData(dataset, table.frame, _target_array(table.targets), names, schema)


def _rows(features: np.ndarray | pd.DataFrame) -> Any:
    """Row-sliceable features: a DataFrame by position, a matrix as it is."""
    return features.iloc if isinstance(features, pd.DataFrame) else features


def _self_check_rows(sample: np.ndarray | pd.DataFrame) -> list[list[Any]]:
    """JSON rows in schema order; a typed set's hold strings and None (server/services/pipeline_inputs.py)."""
    return rows_of_frame(sample) if isinstance(sample, pd.DataFrame) else sample.tolist()


@dataclass(frozen=True)
class _Split:
    x_train: np.ndarray | pd.DataFrame
    x_test: np.ndarray | pd.DataFrame
    y_train: np.ndarray
    y_test: np.ndarray


def _check_wanted(command: TrainCommand) -> None:
    if not command.still_wanted():
        logger.warning("Train of %s abandoned: the caller is gone; nothing was recorded", command.model_type)
        raise Cancelled(f"Train of {command.model_type!r} abandoned: the caller is gone; nothing was recorded")


def _default_algorithm(model_type: str) -> str:
    if model_type in CATALOG:
        return model_type
    raise InvalidArgument(
        f"algorithm is required: model type {model_type!r} does not name a recipe ({', '.join(sorted(CATALOG))})"
    )


def _seed(value: int) -> int:
    if value == 0:
        return DEFAULT_SEED
    if not 0 < value < 2**32:
        raise InvalidArgument(f"random_seed {value} is outside [1, 2**32 - 1]")
    return value


def _test_fraction(value: float) -> float:
    if value == 0:
        return DEFAULT_TEST_FRACTION
    if not 0.05 <= value <= 0.5:
        raise InvalidArgument(f"test_fraction {value} is outside [0.05, 0.5]")
    return value


def _names(given: Sequence[str], features: np.ndarray) -> tuple[str, ...]:
    width = features.shape[1]
    if not given:
        return tuple(f"f{i}" for i in range(width))
    if len(given) != width:
        raise InvalidArgument(f"{len(given)} feature names given for {width} features")
    check_feature_names(given)
    return tuple(given)


def _target_array(targets: Sequence[TargetValue]) -> np.ndarray:
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in targets):
        return np.asarray(targets)
    return np.asarray([str(t) for t in targets], dtype=object)


def _check_targets(recipe: Recipe, targets: np.ndarray) -> None:
    if len(targets) < MIN_TRAINING_ROWS:
        raise FailedPrecondition(f"too few rows to train: {len(targets)}, at least {MIN_TRAINING_ROWS} needed")
    if recipe.task == CLASSIFICATION:
        classes = np.unique(targets.astype(str)) if _is_text(targets) else np.unique(targets)
        if len(classes) < 2:
            raise FailedPrecondition(f"too few classes to train a classifier: {len(classes)}, at least 2 needed")
        if targets.dtype.kind == "f" and not np.all(np.mod(targets, 1) == 0):
            raise FailedPrecondition(
                f"algorithm {recipe.name} is a classifier but the targets are continuous numbers; "
                "choose a regression algorithm"
            )
    elif _is_text(targets):
        raise FailedPrecondition(f"algorithm {recipe.name} is a regressor but the targets are text labels")
    elif not np.isfinite(targets.astype(np.float64)).all():
        raise FailedPrecondition("the targets hold a non-finite value")


def _is_text(targets: np.ndarray) -> bool:
    """Stored labels arrive as an object array, inline ones as numpy text (`<U`): both are labels."""
    return targets.dtype == object or targets.dtype.kind in "US"


def _split(recipe: Recipe, data: _TrainingData, test_fraction: float, seed: int) -> _Split:
    stratify = None
    if recipe.task == CLASSIFICATION:
        _, counts = np.unique(data.targets, return_counts=True)
        n_test = int(np.ceil(len(data.targets) * test_fraction))
        if counts.min() >= 2 and n_test >= len(counts):
            stratify = data.targets
    x_train, x_test, y_train, y_test = train_test_split(
        data.features, data.targets, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    if recipe.task == CLASSIFICATION and len(np.unique(y_train)) < 2:
        raise FailedPrecondition("too few rows per class: the training split holds a single class")
    return _Split(x_train, x_test, y_train, y_test)


def _evaluate(recipe: Recipe, pipeline: Any, split: _Split) -> dict[str, float]:
    predicted = pipeline.predict(split.x_test)
    if recipe.task == CLASSIFICATION:
        return {
            ACCURACY: float(accuracy_score(split.y_test, predicted)),
            F1_MACRO: float(f1_score(split.y_test, predicted, average="macro")),
            HOLDOUT_ROWS: float(len(split.y_test)),
        }
    return {
        R2: float(r2_score(split.y_test, predicted)),
        MAE: float(mean_absolute_error(split.y_test, predicted)),
        RMSE: float(np.sqrt(mean_squared_error(split.y_test, predicted))),
        HOLDOUT_ROWS: float(len(split.y_test)),
    }
