"""Plain records that move between the storage layer, the services and the transports."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where a typed table is built, not by every importer of the records
    import pandas as pd

# A target as stored in data_history: JSON scalar, a string label or a number.
TargetValue = str | int | float


class VersionPolicy(enum.StrEnum):
    """What to do with an artifact trained under other library versions than the running ones."""

    WARN = "warn"  # serve it, and say so in ListModels
    REFUSE = "refuse"  # treat it as unservable


class RuntimeChoice(enum.StrEnum):
    """Which form of a pipeline answers Predict and ModelInfer."""

    AUTO = "auto"  # a compiled form proven faithful to the pipeline where there is one, else the pipeline
    SKLEARN = "sklearn"  # the pipeline's own predict, everywhere


class ColumnType(enum.StrEnum):
    """What a column of a typed table holds; either may be missing in any row."""

    NUMBER = "number"  # float64; booleans and integers read as numbers; a missing value is NaN
    STRING = "string"  # text; a missing value is None


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType


@dataclass(frozen=True)
class Schema:
    """The ordered, named, typed columns of a dataset, or the inputs a set's pipeline takes (its signature).

    A schema of numbers only whose pipeline takes a plain matrix (every Phase-4 dataset and set) is `numeric`:
    its rows go to the pipeline as a float64 matrix in column order, as they always did. Any other takes a
    pandas DataFrame with these column names.
    """

    columns: tuple[Column, ...]
    # Whether the pipeline takes a DataFrame by column name (a typed pipeline) rather than a float64 matrix.
    by_name: bool = False

    @classmethod
    def numbers(cls, names: tuple[str, ...] | list[str]) -> Schema:
        return cls(tuple(Column(name, ColumnType.NUMBER) for name in names))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def numeric(self) -> bool:
        return not self.by_name and all(column.type is ColumnType.NUMBER for column in self.columns)

    def column(self, name: str) -> Column | None:
        return next((column for column in self.columns if column.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"columns": [[c.name, c.type.value] for c in self.columns], "by_name": self.by_name}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Schema:
        columns = tuple(Column(str(name), ColumnType(kind)) for name, kind in document.get("columns", []))
        return cls(columns, bool(document.get("by_name", False)))


@dataclass(frozen=True)
class HistoryRow:
    features: tuple[float, ...]
    target: TargetValue


@dataclass(frozen=True)
class Dataset:
    name: str
    feature_names: tuple[str, ...]
    features: list[list[float]]
    targets: list[TargetValue]


@dataclass(frozen=True)
class TypedDataset:
    """A dataset as a typed pipeline fits on it: a DataFrame whose columns are the schema's names in order,
    numbers as float64 with NaN where missing, strings as object dtype with None where missing; a target per row.
    A numbers-only dataset reads the same way, its schema Schema.numbers(feature_names)."""

    schema: Schema
    frame: pd.DataFrame
    targets: list[TargetValue]


@dataclass(frozen=True)
class ColumnSummary:
    name: str
    type: ColumnType
    missing: int  # the rows without a value in this column


@dataclass(frozen=True)
class DatasetSummary:
    """What ListDatasets says of a dataset: its feature columns in order, its size, what its targets are."""

    name: str
    columns: tuple[ColumnSummary, ...]
    rows: int
    target_type: str  # "number", "integer", "label", "mixed", or "" for a dataset without rows


@dataclass(frozen=True)
class ArtifactInfo:
    """Where a fitted pipeline was written and how to recognise its bytes."""

    relative_path: str
    sha256: str
    size_bytes: int
    # HMAC-SHA256 over the model type and the three fields above, when the server has a signing key.
    signature: str | None = None


@dataclass(frozen=True)
class SelfCheck:
    """A few held-out inputs and the answers the freshly fitted pipeline gave them."""

    inputs: list[list[float]]
    outputs: list[Any]


@dataclass(frozen=True)
class RuntimeRecord:
    """What answers a set's Predicts besides its pipeline, and the proof that allowed it.

    `file` is None when the pipeline itself answers; `note` then says why (no runtime covers the
    estimator, the proof failed, --runtime sklearn at training).
    """

    name: str = ""  # "onnxruntime", "treelite", ...; "" when the pipeline answers
    version: str = ""
    rows_checked: int = 0
    max_deviation: float = 0.0
    note: str = ""
    # The training range the proof sampled, per feature, so that loading can check the proof again.
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    file: ArtifactInfo | None = None


TRAINED = "trained"
IMPORTED = "imported"


@dataclass(frozen=True, kw_only=True)
class SetDescription:
    """What a new prediction set says of itself; the artifact owner adds where its file is and the
    environment it was made in (server/services/registration.py)."""

    model_type: str
    dataset: str
    algorithm: str
    task: str
    params: dict[str, Any]
    metrics: dict[str, float]
    feature_names: tuple[str, ...]
    classes: tuple[TargetValue, ...] | None
    training_rows: int
    fit_seconds: float
    self_check: SelfCheck
    origin: str = TRAINED  # or IMPORTED
    # The inputs the pipeline takes; None: numbers only, named by feature_names (a matrix pipeline).
    input_schema: Schema | None = None

    @property
    def schema(self) -> Schema:
        return self.input_schema or Schema.numbers(self.feature_names)


@dataclass(frozen=True, kw_only=True)
class NewPredictionSet(SetDescription):
    """A prediction set about to be recorded: its description, its written artifact, its environment."""

    artifact: ArtifactInfo
    environment: dict[str, str]
    runtime: RuntimeRecord | None = None

    @classmethod
    def of(
        cls,
        description: SetDescription,
        artifact: ArtifactInfo,
        environment: dict[str, str],
        runtime: RuntimeRecord | None = None,
    ) -> NewPredictionSet:
        given = {f.name: getattr(description, f.name) for f in fields(SetDescription)}
        return cls(**given, artifact=artifact, environment=environment, runtime=runtime)


@dataclass(frozen=True)
class PredictionSetRecord:
    """A row of prediction_sets; the artifact fields are None for Phase-4 rows."""

    id: int
    model_type: str
    dataset: str
    created_at: str
    is_current: bool
    metrics: dict[str, float]
    algorithm: str | None = None
    task: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    feature_names: tuple[str, ...] = ()
    classes: tuple[TargetValue, ...] | None = None
    training_rows: int | None = None
    fit_seconds: float | None = None
    artifact: ArtifactInfo | None = None
    sklearn_version: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    self_check: SelfCheck | None = None
    origin: str = TRAINED
    # None for sets recorded before compiled forms existed.
    runtime: RuntimeRecord | None = None
    archived_at: str | None = None
    # The inputs the pipeline takes; None (every set recorded before typed tables): numbers named by feature_names.
    input_schema: Schema | None = None

    @property
    def schema(self) -> Schema:
        return self.input_schema or Schema.numbers(self.feature_names)

    @property
    def files(self) -> tuple[ArtifactInfo, ...]:
        """The set's files in the artifact store: its artifact, and its compiled form when it has one."""
        runtime_file = self.runtime.file if self.runtime is not None else None
        return tuple(file for file in (self.artifact, runtime_file) if file is not None)
