"""All translation between protobuf messages and the services' plain Python values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from predserve.protos import predserve_pb2 as pb
from predserve.server.api.ingest_tables import TableParts
from predserve.server.domain import (
    Column,
    ColumnType,
    DatasetSummary,
    HistoryRow,
    PredictionSetRecord,
    RuntimeRecord,
    Schema,
    TargetValue,
)
from predserve.server.errors import InvalidArgument, ResourceExhausted
from predserve.server.services.history import ColumnRows, IngestOutcome, Upload, check_batch_rows
from predserve.server.services.importing import ImportCommand
from predserve.server.services.input_tables import InputColumn, InputTable, NumberColumn, StringColumn
from predserve.server.services.lifecycle import Collection, Promotion
from predserve.server.services.prediction import PredictionResult
from predserve.server.services.registration import PromotionPolicy, Registration
from predserve.server.services.registry import SKLEARN, ModelStatusView, SetFilter, SetPage
from predserve.server.services.training import TrainCommand


def target_from_proto(target: pb.Target, index: int) -> TargetValue:
    which = target.WhichOneof("value")
    if which is None:
        raise InvalidArgument(f"row {index} has no target")
    value: TargetValue = getattr(target, which)
    return value


def target_to_proto(value: TargetValue) -> pb.Target:
    if isinstance(value, str):
        return pb.Target(label=value)
    if isinstance(value, bool) or isinstance(value, int):
        return pb.Target(integer=int(value))
    return pb.Target(number=float(value))


def history_rows(rows: Iterable[pb.Row], first_index: int = 0) -> list[HistoryRow]:
    return [
        HistoryRow(tuple(row.features), target_from_proto(row.target, first_index + i)) for i, row in enumerate(rows)
    ]


def ingest_upload(messages: Iterable[pb.IngestHistoryRequest], max_rows: int | None) -> Upload:
    """Gathers the whole stream (one batch) first, so that a bad row anywhere stores nothing; stops at the
    row limit. Columns are decoded as whole arrays: the float64 bytes of every message, joined once."""
    dataset, first = "", None
    feature_names: list[str] = []
    rows: list[HistoryRow] = []
    columns = _Columns()
    table = TableParts()
    for message in messages:
        if message.dataset and dataset and message.dataset != dataset:
            raise InvalidArgument(f"one stream holds one dataset: got {message.dataset!r} after {dataset!r}")
        first = first or message
        dataset = dataset or message.dataset
        feature_names = feature_names or list(message.feature_names)
        rows.extend(history_rows(message.rows, len(rows)))
        if message.HasField("columns"):
            columns.add(message.columns)
        if message.HasField("table"):
            table.add(message.table)
        if rows and columns.count:
            raise InvalidArgument("a stream sends its rows as Row messages or as columns, not both")
        if table.count and (rows or columns.count):
            raise InvalidArgument("a stream sends its rows as Row messages, columns or a table, one of them")
        check_batch_rows(len(rows) + columns.count + table.count, max_rows)
    return Upload(
        dataset=dataset,
        feature_names=feature_names,
        rows=rows,
        columns=columns.rows() if columns.count else None,
        ingest_id=first.ingest_id if first else "",
        batch_number=first.batch_number if first else 0,
        first_row=first.first_row if first else 0,
        table=table.columns() if table.names else None,
        target_column=first.target_column if first else "",
        column_types=stated_columns(first.column_types) if first else (),
    )


def list_datasets_response(datasets: Sequence[DatasetSummary]) -> pb.ListDatasetsResponse:
    return pb.ListDatasetsResponse(
        datasets=[
            pb.DatasetInfo(
                name=dataset.name,
                rows=dataset.rows,
                target_type=dataset.target_type,
                columns=[
                    pb.ColumnSpec(name=c.name, type=_COLUMN_TYPE_VALUES[c.type], missing=c.missing)
                    for c in dataset.columns
                ],
            )
            for dataset in datasets
        ]
    )


class _Columns:
    """The columns of a stream's messages, in order: feature bytes kept as sent, targets as Python values."""

    def __init__(self) -> None:
        self.width = 0
        self.count = 0
        self.features: list[bytes] = []
        self.targets: list[TargetValue] = []

    def add(self, batch: pb.ColumnBatch) -> None:
        width = batch.feature_count
        if width <= 0:
            raise InvalidArgument(f"row {self.count} has no features")
        if self.width and width != self.width:
            raise InvalidArgument(f"row {self.count} has {width} features, expected {self.width}")
        count, extra = divmod(len(batch.features), 8 * width)
        if extra:
            raise InvalidArgument(f"columns of {width} features hold {len(batch.features)} bytes: not whole rows")
        self.targets.extend(_column_targets(batch, count, self.count))
        self.features.append(batch.features)
        self.width, self.count = width, self.count + count

    def rows(self) -> ColumnRows:
        data = self.features[0] if len(self.features) == 1 else b"".join(self.features)
        matrix = np.frombuffer(data, dtype="<f8").reshape(self.count, self.width)
        return ColumnRows(matrix.astype(np.float64, copy=False), self.targets)


def _column_targets(batch: pb.ColumnBatch, count: int, first_index: int) -> list[TargetValue]:
    which = batch.WhichOneof("targets")
    if which is None:
        if count:
            raise InvalidArgument(f"row {first_index} has no target")
        return []
    if which == "label_targets":
        values: list[TargetValue] = list(batch.label_targets.values)
    else:
        data = getattr(batch, which)
        kind = "<i8" if which == "integer_targets" else "<f8"
        if len(data) != 8 * count:
            raise InvalidArgument(f"{which} holds {len(data) // 8} values for {count} rows")
        values = np.frombuffer(data, dtype=kind).tolist()
    if len(values) != count:
        raise InvalidArgument(f"{which} holds {len(values)} values for {count} rows")
    if batch.integer_rows:
        if which != "number_targets" or len(batch.integer_rows) != count:
            raise InvalidArgument("integer_rows marks number_targets, one byte per row")
        for index in np.flatnonzero(np.frombuffer(batch.integer_rows, dtype=np.uint8)).tolist():
            number = float(values[index])
            if not number.is_integer():
                raise InvalidArgument(f"row {first_index + index} is marked an integer but holds {number!r}")
            values[index] = int(number)
    return values


def ingest_response(outcome: IngestOutcome) -> pb.IngestHistoryResponse:
    response = pb.IngestHistoryResponse(
        dataset=outcome.dataset,
        rows_added=outcome.rows_added,
        total_rows=outcome.total_rows,
        ingest_id=outcome.ingest_id,
        batch_number=outcome.batch_number,
        already_stored=outcome.already_stored,
    )
    if outcome.progress is not None:
        response.next_batch = outcome.progress.next_batch
        response.next_row = outcome.progress.next_row
    return response


def feature_rows(rows: Sequence[pb.Row]) -> list[Sequence[float]]:
    # Lists: NumPy reads a list of floats directly, while each repeated field it must first probe for the
    # array protocols (~20 µs a call in the server, where those paths are cold).
    return [list(row.features) for row in rows]


def predict_input(request: pb.PredictRequest) -> list[Sequence[float]] | InputTable:
    """A Predict's rows of numbers, or its table of named, typed columns."""
    if not request.HasField("table"):
        return feature_rows(request.rows)
    if request.rows:
        raise InvalidArgument("a PredictRequest sends rows or a table, not both")
    return input_table(request.table)


def input_table(table: pb.Table) -> InputTable:
    """Each column decoded as one array: a number column by NumPy straight from the repeated field, without a
    Python float per value."""
    columns: list[InputColumn] = []
    for index, column in enumerate(table.columns):
        which = column.WhichOneof("values")
        if which == "numbers":
            columns.append(NumberColumn(column.name, np.array(column.numbers.values, dtype=np.float64)))
        elif which == "strings":
            columns.append(StringColumn(column.name, column.strings.values, column.strings.missing))
        else:
            raise InvalidArgument(f"column {index} ({column.name!r}) of the table holds neither numbers nor strings")
    return InputTable.of(columns)


def train_command(request: pb.TrainRequest, still_wanted: Callable[[], bool]) -> TrainCommand:
    return TrainCommand(
        model_type=request.model_type,
        algorithm=request.algorithm,
        dataset=request.dataset,
        params=dict(request.params),
        rows=history_rows(request.rows),
        feature_names=list(request.feature_names),
        test_fraction=request.test_fraction,
        random_seed=request.random_seed,
        promotion=promotion_policy(request.promotion),
        still_wanted=still_wanted,
    )


_POLICIES = {
    pb.PROMOTE_ALWAYS: PromotionPolicy.ALWAYS,
    pb.REGISTER_ONLY: PromotionPolicy.REGISTER_ONLY,
    pb.PROMOTE_IF_BETTER: PromotionPolicy.IF_BETTER,
}


def promotion_policy(value: int) -> PromotionPolicy:
    policy = _POLICIES.get(value)  # type: ignore[call-overload]
    if policy is None:
        raise InvalidArgument(f"unknown promotion policy {value}")
    return policy


def import_command(messages: Iterable[pb.ImportModelRequest], max_bytes: int) -> ImportCommand:
    """Gathers the streamed chunks; the first message carries the model type and options."""
    first: pb.ImportModelRequest | None = None
    chunks: list[bytes] = []
    size = 0
    for message in messages:
        first = first or message
        size += len(message.chunk)
        if size > max_bytes:
            raise ResourceExhausted(f"the artifact exceeds the import limit of {max_bytes} bytes")
        chunks.append(message.chunk)
    if first is None:
        raise InvalidArgument("the import stream was empty")
    return ImportCommand(
        model_type=first.model_type,
        data=b"".join(chunks),
        dataset=first.dataset,
        promotion=promotion_policy(first.promotion),
        input_schema=stated_columns(first.input_schema),
    )


_COLUMN_TYPES = {pb.NUMBER: ColumnType.NUMBER, pb.STRING: ColumnType.STRING}
_COLUMN_TYPE_VALUES = {kind: value for value, kind in _COLUMN_TYPES.items()}


def stated_columns(specs: Iterable[pb.ColumnSpec]) -> tuple[Column, ...]:
    """An importer's statement of a pipeline's input columns; a column without a type is refused by name."""
    columns = []
    for spec in specs:
        kind = _COLUMN_TYPES.get(spec.type)  # type: ignore[call-overload]
        if kind is None or not spec.name:
            raise InvalidArgument(f"input_schema column {spec.name!r} needs a name and a type (NUMBER or STRING)")
        columns.append(Column(spec.name, kind))
    return tuple(columns)


def schema_specs(schema: Schema) -> list[pb.ColumnSpec]:
    """A set's input schema as ColumnSpecs, in order (sets recorded before typed tables: numbers)."""
    return [pb.ColumnSpec(name=column.name, type=_COLUMN_TYPE_VALUES[column.type]) for column in schema.columns]


def train_response(registration: Registration, persist_seconds: float = 0.0) -> pb.TrainResponse:
    record = registration.model.record
    assert record.artifact is not None
    return pb.TrainResponse(
        prediction_set_id=record.id,
        model_type=record.model_type,
        algorithm=record.algorithm or "",
        model_artifact_path=record.artifact.relative_path,
        artifact_sha256=record.artifact.sha256,
        artifact_size_bytes=record.artifact.size_bytes,
        metrics=record.metrics,
        training_rows=record.training_rows or 0,
        fit_seconds=record.fit_seconds or 0.0,
        persist_seconds=persist_seconds,
        promoted=registration.promoted,
        promotion_reason=registration.reason,
    )


def promote_response(promotion: Promotion) -> pb.PromoteResponse:
    record = promotion.model.record
    return pb.PromoteResponse(
        model_type=record.model_type, prediction_set_id=record.id, previous_set_id=promotion.previous_set_id
    )


def garbage_collect_response(collection: Collection) -> pb.GarbageCollectResponse:
    return pb.GarbageCollectResponse(
        collected=[prediction_set(c.record) for c in collection.sets],
        bytes_freed=collection.bytes_freed,
        dry_run=collection.dry_run,
    )


def predict_response(result: PredictionResult) -> pb.PredictResponse:
    response = pb.PredictResponse(
        prediction_set_id=result.prediction_set_id,
        model_type=result.model_type,
        artifact_sha256_prefix=result.artifact_sha256_prefix,
    )
    if result.probabilities is not None:
        response.classes.extend(target_to_proto(label) for label in result.classes)
        for value, probabilities in zip(result.values, result.probabilities.tolist(), strict=True):
            response.predictions.add(value=target_to_proto(value), probabilities=probabilities)
    else:
        for value in result.values:
            response.predictions.add(value=target_to_proto(value))
    return response


def model_status(view: ModelStatusView) -> pb.ModelStatus:
    status = pb.ModelStatus(
        model_type=view.model_type,
        loaded=view.loaded,
        status_message=view.status_message,
        load_seconds=view.load_seconds,
    )
    record = view.record
    if record is not None:
        status.prediction_set_id = record.id
        status.metrics.update(record.metrics)
        status.feature_names.extend(record.feature_names)
        status.input_schema.extend(schema_specs(record.schema))
        status.trained_at = record.created_at
        status.algorithm = record.algorithm or ""
        status.task = record.task or ""
        if record.artifact is not None:
            status.model_artifact_path = record.artifact.relative_path
            status.artifact_sha256 = record.artifact.sha256
    status.runtime.CopyFrom(runtime_info(view.record.runtime if view.record else None, view.answering))
    return status


def runtime_info(recorded: RuntimeRecord | None, answering: str) -> pb.RuntimeInfo:
    """What answers, and the proof recorded with the set; the note says why the pipeline answers instead."""
    info = pb.RuntimeInfo(answering=answering)
    if recorded is None:
        info.note = "recorded before compiled forms: the pipeline answers"
        return info
    info.library_version = recorded.version
    info.rows_checked = recorded.rows_checked
    info.max_deviation = recorded.max_deviation
    if recorded.file is not None and answering == SKLEARN:
        info.note = f"its {recorded.name} form is not in use here (see status_message or --runtime)"
    else:
        info.note = recorded.note
    return info


def recorded_runtime(record: PredictionSetRecord) -> str:
    """What answers a set wherever its compiled form loads: that form's runtime, or the pipeline."""
    runtime = record.runtime
    return runtime.name if runtime is not None and runtime.file is not None else SKLEARN


def set_filter(request: pb.ListPredictionSetsRequest) -> SetFilter:
    created_after = None
    if request.HasField("created_after"):
        try:
            created_after = request.created_after.ToDatetime(tzinfo=dt.UTC)
        except (ValueError, OverflowError) as exc:
            raise InvalidArgument(f"created_after is not a valid time: {exc}") from exc
    return SetFilter(request.current_only, request.exclude_archived, created_after)


def list_prediction_sets_response(page: SetPage) -> pb.ListPredictionSetsResponse:
    return pb.ListPredictionSetsResponse(
        prediction_sets=[prediction_set(record) for record in page.sets], next_page_token=page.next_page_token
    )


def prediction_set(record: PredictionSetRecord) -> pb.PredictionSet:
    message = pb.PredictionSet(
        id=record.id,
        model_type=record.model_type,
        dataset=record.dataset,
        created_at=record.created_at,
        is_current=record.is_current,
        metrics=record.metrics,
        algorithm=record.algorithm or "",
        params={name: str(value) for name, value in record.params.items()},
        sklearn_version=record.sklearn_version or "",
        joblib_version=record.environment.get("joblib", ""),
        training_rows=record.training_rows or 0,
        fit_seconds=record.fit_seconds or 0.0,
        feature_names=record.feature_names,
        origin=record.origin,
        archived_at=record.archived_at or "",
        input_schema=schema_specs(record.schema),
    )
    if record.artifact is not None:
        message.model_artifact_path = record.artifact.relative_path
        message.artifact_sha256 = record.artifact.sha256
        message.artifact_size_bytes = record.artifact.size_bytes
    message.runtime.CopyFrom(runtime_info(record.runtime, recorded_runtime(record)))
    return message
