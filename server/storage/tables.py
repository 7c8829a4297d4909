"""Typed rows as data_history and data_segments keep them: named columns of numbers and strings, values missing.

A JSON row is an array of numbers, strings and nulls in schema order. A typed segment ('arrow') is an Arrow IPC
stream of one record batch, a float64 or utf8 column per schema column, null where a value is missing: pyarrow
writes and reads it without a Python object per value, and turns it into the DataFrame a pipeline fits on
(measured against Parquet and a hand-made layout in bench/typed_segments.py). A dataset's datasets.column_types
holds its Schema.to_json() and, under "missing", the count of missing values per column, kept in the
transaction that appends rows so that ListDatasets reads no rows to give it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from predserve.server.domain import ColumnSummary, ColumnType, DatasetSummary, Schema, TargetValue, TypedDataset
from predserve.server.errors import FailedPrecondition
from predserve.server.storage.columns import encode_targets, target_values
from predserve.server.storage.databases import Connection

logger = logging.getLogger(__name__)

F8 = "f8"  # row-major little-endian float64 (server/storage/columns.py): numbers-only datasets
ARROW = "arrow"


@dataclass(frozen=True)
class TypedRows:
    """A batch of typed rows in schema order: per column a float64 array (NaN where missing) or an object
    array of str (None where missing), and a target per row."""

    schema: Schema
    columns: tuple[np.ndarray, ...]
    targets: list[TargetValue]

    @property
    def row_count(self) -> int:
        return len(self.targets)

    def missing(self) -> list[int]:
        return [int(_missing_mask(column).sum()) for column in self.columns]


def _missing_mask(column: np.ndarray) -> np.ndarray:
    if column.dtype == np.float64:
        return np.isnan(column)
    return np.fromiter((value is None for value in column), dtype=bool, count=len(column))


def table_sha256(rows: TypedRows) -> str:
    """The SHA-256 of a typed batch's rows (ingest_batches.content_sha256): its schema, each column (numbers as
    little-endian float64, every missing value the same NaN; strings as their JSON array), its targets as
    data_segments encodes them, each part preceded by its length."""
    digest = hashlib.sha256(b"predserve typed batch v1\0")
    parts: list[bytes] = [json.dumps(rows.schema.to_json()).encode()]
    for column in rows.columns:
        if column.dtype == np.float64:
            parts.append(np.where(np.isnan(column), np.nan, column).astype("<f8").tobytes())
        else:
            parts.append(orjson.dumps(column.tolist()))
    encoded = encode_targets(list(rows.targets))
    parts += [encoded.kind.encode(), encoded.data, (encoded.labels or "").encode()]
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def row_documents(rows: TypedRows) -> list[str]:
    """One JSON array per row: numbers, strings, and null where a value is missing."""
    values = []
    for column in rows.columns:
        listed = column.tolist()
        for index in np.flatnonzero(_missing_mask(column)).tolist():
            listed[index] = None
        values.append(listed)
    return [orjson.dumps(row).decode() for row in zip(*values, strict=True)]


def _arrow_schema(schema: Schema) -> Any:
    import pyarrow as pa

    kinds = {ColumnType.NUMBER: pa.float64(), ColumnType.STRING: pa.string()}
    return pa.schema([pa.field(c.name, kinds[c.type]) for c in schema.columns])


def encode_segment(schema: Schema, columns: Sequence[np.ndarray]) -> bytes:
    """The columns as an Arrow IPC stream of one record batch, nulls where values are missing."""
    import pyarrow as pa

    arrow_schema = _arrow_schema(schema)
    arrays = [
        pa.array(column, type=field.type, from_pandas=True)  # from_pandas: NaN and None become nulls
        for column, field in zip(columns, arrow_schema, strict=True)
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, arrow_schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


def decode_segment(data: bytes, width: int) -> list[np.ndarray]:
    """A segment's columns: float64 with NaN, or object arrays with None, where values are missing."""
    import pyarrow as pa

    batch = pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()
    if batch.num_columns != width:
        raise ValueError(f"an Arrow segment holds {batch.num_columns} columns, its dataset {width}")
    # float64 with NaN where null; strings as an object array with None where null
    return [column.to_numpy(zero_copy_only=False) for column in batch.columns]


def decode_f8_segment(data: bytes, width: int) -> list[np.ndarray]:
    matrix = np.frombuffer(data, dtype="<f8").reshape(-1, width)
    return [matrix[:, i] for i in range(width)]


def columns_from_documents(dataset: str, schema: Schema, documents: Sequence[str]) -> list[np.ndarray]:
    """The columns of JSON rows, as decode_segment gives them."""
    width = len(schema.columns)
    rows = [json.loads(document) for document in documents]
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, list) or len(row) != width), None)
    if bad is not None:
        raise FailedPrecondition(f"dataset {dataset!r} is not usable: row {bad} does not hold {width} values")
    if not rows:
        return [np.empty(0, dtype=np.float64 if c.type is ColumnType.NUMBER else object) for c in schema.columns]
    columns = []
    for position, (column, values) in enumerate(zip(schema.columns, zip(*rows, strict=True), strict=True)):
        if column.type is ColumnType.NUMBER:
            try:
                numbers = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            except (TypeError, ValueError):
                raise FailedPrecondition(
                    f"dataset {dataset!r} is not usable: column {position} ({column.name!r}) holds a non-number"
                ) from None
            columns.append(numbers)
        else:
            texts = np.empty(len(values), dtype=object)
            texts[:] = list(values)
            columns.append(texts)
    return columns


def stored_types(schema: Schema, missing: Sequence[int]) -> str:
    """datasets.column_types: the schema, and its columns' missing counts."""
    return json.dumps({**schema.to_json(), "missing": list(missing)})


def read_types(text: str | None) -> tuple[Schema | None, list[int]]:
    if text is None:
        return None, []
    document = json.loads(text)
    schema = Schema.from_json(document)
    return schema, [int(n) for n in document.get("missing", [0] * len(schema.columns))]


def target_type(kinds: set[str]) -> str:
    """ListDatasets' name of what a dataset's targets are, from its segments' target kinds."""
    if not kinds:
        return ""
    if kinds == {"int64"}:
        return "integer"
    if kinds <= {"int64", "number"}:
        return "number"
    if kinds == {"labels"}:
        return "label"
    return "mixed"


def dataset_row(conn: Connection, dataset: str) -> tuple[tuple[str, ...], str | None]:
    """The dataset's feature names and its column_types (None: numbers only, or no such dataset)."""
    row = conn.execute("SELECT feature_names, column_types FROM datasets WHERE name = ?", (dataset,)).fetchone()
    return ((), None) if row is None else (tuple(json.loads(row[0])), row[1])


def dataset_schema(conn: Connection, dataset: str) -> Schema | None:
    names, stored = dataset_row(conn, dataset)
    typed = read_types(stored)[0]
    if typed is not None:
        return typed
    if names:
        return Schema.numbers(names)
    segment = conn.execute(
        "SELECT feature_count FROM data_segments WHERE dataset = ? ORDER BY dataset, first_row_id LIMIT 1", (dataset,)
    ).fetchone()
    if segment is None:
        row = conn.execute(
            "SELECT features FROM data_history WHERE dataset = ? ORDER BY dataset, id LIMIT 1", (dataset,)
        ).fetchone()
        if row is None:
            return None
        document = json.loads(row[0])
        width = len(document) if isinstance(document, list) else 0
    else:
        width = int(segment[0])
    return Schema.numbers([f"f{i}" for i in range(width)])


def add_rows(conn: Connection, dataset: str, ids: Sequence[int], rows: TypedRows, merge_below: int, step: int) -> None:
    """Copies typed rows just appended (with their ids) as history.py's _add_rows does numbers: into the dataset's
    last segment while it is typed and both together hold at most `merge_below` rows, else as new segments of
    at most `step` rows."""
    width = len(rows.schema.columns)
    last = conn.execute(
        "SELECT id, first_row_id, row_count, feature_count, features, target_kind, targets, target_labels, "
        "features_format FROM data_segments WHERE dataset = ? "
        "ORDER BY dataset DESC, first_row_id DESC LIMIT 1",
        (dataset,),
    ).fetchone()
    if (
        last is not None
        and last["features_format"] == ARROW
        and int(last["row_count"]) + len(ids) <= merge_below
        and int(last["feature_count"]) == width
    ):
        stored = (last["target_kind"], last["targets"], last["target_labels"], int(last["row_count"]))
        conn.execute("DELETE FROM data_segments WHERE id = ?", (last["id"],))
        earlier = decode_segment(last["features"], width)
        merged = TypedRows(
            rows.schema,
            tuple(np.concatenate([a, b]) for a, b in zip(earlier, rows.columns, strict=True)),
            target_values(*stored) + list(rows.targets),
        )
        _insert_segment(conn, dataset, (int(last["first_row_id"]), ids[-1]), merged)
        return
    for start in range(0, len(ids), step):
        end = min(start + step, len(ids))
        part = TypedRows(rows.schema, tuple(c[start:end] for c in rows.columns), list(rows.targets[start:end]))
        _insert_segment(conn, dataset, (ids[start], ids[end - 1]), part)


def _insert_segment(conn: Connection, dataset: str, first_last: tuple[int, int], rows: TypedRows) -> None:
    encoded = encode_targets(rows.targets)
    conn.execute(
        "INSERT INTO data_segments (dataset, first_row_id, last_row_id, row_count, feature_count, features, "
        "target_kind, targets, target_labels, features_format) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            dataset,
            *first_last,
            rows.row_count,
            len(rows.schema.columns),
            encode_segment(rows.schema, rows.columns),
            encoded.kind,
            encoded.data,
            encoded.labels,
            ARROW,
        ),
    )


def other_schema(dataset: str, fixed: Schema, given: Schema) -> str:
    def shown(schema: Schema) -> str:
        return ", ".join(f"{c.name}: {c.type.value}" for c in schema.columns)

    return (
        f"dataset {dataset!r} has the columns ({shown(fixed)}), fixed by its first rows; these rows give "
        f"({shown(given)})"
    )


def load_table(
    conn: Connection, dataset: str, schema: Schema | None, segments: Callable[[Connection, str], Iterator[Any]]
) -> TypedDataset | None:
    """The dataset's DataFrame (HistoryRepository.load_table), in the caller's snapshot: filled segment by
    segment, `segments` yielding a few at a time, when they copy every row in the schema's width; else from the
    JSON rows, as Train's numbers path falls back."""
    rows = int(conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (dataset,)).fetchone()[0])
    if rows == 0 or schema is None:
        return None
    width = len(schema.columns)
    copied, low, high = conn.execute(
        "SELECT SUM(row_count), MIN(feature_count), MAX(feature_count) FROM data_segments WHERE dataset = ?",
        (dataset,),
    ).fetchone()
    if int(copied or 0) == rows and int(low) == int(high) == width:
        columns = [np.empty(rows, dtype=np.float64 if c.type is ColumnType.NUMBER else object) for c in schema.columns]
        targets: list[TargetValue] = []
        filled = 0
        for segment in segments(conn, dataset):
            count = int(segment["row_count"])
            decode = decode_segment if segment["features_format"] == ARROW else decode_f8_segment
            for column, values in zip(columns, decode(segment["features"], width), strict=True):
                column[filled : filled + count] = values
            targets += target_values(segment["target_kind"], segment["targets"], segment["target_labels"], count)
            filled += count
    else:
        logger.warning(
            "dataset %s: its segments hold %s of its %d rows; reading its JSON rows instead", dataset, copied, rows
        )
        stored = conn.execute(
            "SELECT features, target FROM data_history WHERE dataset = ? ORDER BY dataset, id", (dataset,)
        ).fetchall()
        columns = columns_from_documents(dataset, schema, [row[0] for row in stored])
        targets = [json.loads(row[1]) for row in stored]
    return TypedDataset(schema, _frame(schema, columns), targets)


def _frame(schema: Schema, columns: Sequence[np.ndarray]) -> Any:
    import pandas as pd

    # As pandas.read_csv holds a table, which is what a pipeline fitted in a notebook saw: number columns float64,
    # text columns object (pandas 3 would infer its str dtype), a missing value NaN in either. SimpleImputer takes
    # NaN as missing and None as a category, so None must never reach a pipeline.
    series = {
        c.name: pd.Series(values, dtype=np.float64, copy=False)
        if c.type is ColumnType.NUMBER
        else pd.Series(_nan_where_missing(values), dtype=object, copy=False)
        for c, values in zip(schema.columns, columns, strict=True)
    }
    return pd.DataFrame(series, copy=False)


def _nan_where_missing(values: np.ndarray) -> np.ndarray:
    import pandas as pd

    missing = pd.isna(values)
    if not missing.any():
        return values
    filled = values.copy()
    filled[missing] = np.nan
    return filled


def summaries(conn: Connection) -> list[DatasetSummary]:
    """Every dataset of the datasets table, by name (ListDatasets): a handful of index reads per dataset."""
    found = []
    for (name,) in conn.execute("SELECT name FROM datasets ORDER BY name").fetchall():
        schema = dataset_schema(conn, name)
        rows = int(conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (name,)).fetchone()[0])
        kinds = {
            str(row[0])
            for row in conn.execute(
                "SELECT DISTINCT target_kind FROM data_segments WHERE dataset = ?", (name,)
            ).fetchall()
        }
        if rows and not kinds:  # rows without a binary copy: what the first row's target is
            first = conn.execute(
                "SELECT target FROM data_history WHERE dataset = ? ORDER BY dataset, id LIMIT 1", (name,)
            ).fetchone()
            kinds = {encode_targets([json.loads(first[0])]).kind}
        missing = read_types(dataset_row(conn, name)[1])[1]
        columns = tuple(
            ColumnSummary(c.name, c.type, missing[i] if i < len(missing) else 0)
            for i, c in enumerate(schema.columns if schema is not None else ())
        )
        found.append(DatasetSummary(name, columns, rows, target_type(kinds) if rows else ""))
    return found
