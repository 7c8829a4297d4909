"""HistoryRepository: data_history, datasets and data_segments, the observations models are trained on.

data_history keeps one JSON document per row, the record since Phase 4. data_segments keeps the same rows
once more, a segment per ingested batch, as the bytes Train reads at columnar speed (server/storage/columns.py):
both are written in one transaction, and a dataset whose segments do not add up to its rows (rows written by
a release before them, say) is read from its JSON rows instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predserve.server.domain import Dataset, DatasetSummary, Schema, TargetValue, TypedDataset
from predserve.server.errors import InvalidArgument
from predserve.server.storage import tables
from predserve.server.storage.columns import (
    INT64,
    LABELS,
    NUMERIC_KINDS,
    decode_features,
    decode_targets,
    encode_features,
    encode_targets,
    target_values,
)
from predserve.server.storage.databases import Connection, RegistryDatabase
from predserve.server.storage.documents import feature_documents, target_documents
from predserve.server.storage.ingests import IngestBatch, IngestProgress, record_batch
from predserve.server.storage.tables import TypedRows
from predserve.server.storage.tables import dataset_row as _dataset_row
from predserve.server.storage.tables import dataset_schema as _schema

logger = logging.getLogger(__name__)

# A segment holds at most this many bytes of features (and at least one row): loading holds FETCH_SEGMENTS of
# them beside the matrix, a constant however large the dataset, and a statement reads one MiB or so.
SEGMENT_BYTES = 2**20
FETCH_SEGMENTS = 2
# A batch this small is added to the dataset's last segment while that stays this small, so that many tiny
# ingests still make segments of some size: rewriting at most this many rows bounds what one ingest costs.
MERGE_BELOW_ROWS = 4096
# Existing rows are copied this many JSON rows at a time (migration 0007): it bounds the memory it takes.
COPY_CHUNK_ROWS = 65536
_FIRST = -(2**63)

_SEGMENT_COLUMNS = (
    "first_row_id, row_count, feature_count, features, target_kind, targets, target_labels, features_format"
)


@dataclass(frozen=True)
class DatasetColumns:
    """A dataset as Train uses it: a float64 matrix (not yet checked for non-finite values) and its targets,
    a numeric or object array equal to what the JSON rows give, or the stored values when they mix kinds."""

    name: str
    feature_names: tuple[str, ...]
    features: np.ndarray
    targets: np.ndarray | list[TargetValue]


class HistoryRepository:
    def __init__(self, database: RegistryDatabase) -> None:
        self.database = database

    def append(
        self, dataset: str, feature_names: Sequence[str], features: np.ndarray, targets: Sequence[TargetValue]
    ) -> int:
        """Appends rows, a float64 matrix and a target per row, as JSON rows and their binary copy in one
        transaction; returns the dataset's row count afterwards.

        A dataset's first rows fix its feature names (none given: it has none); rows that give other
        names store nothing. Every dataset with rows has its datasets row (migration 0007 gave the Phase-4
        ones theirs, with no names), so only a dataset's first rows insert one; under the dataset's lock, a
        second first ingest finds the first one's names and is compared with them.
        """
        return self._append(dataset, feature_names, features, targets, None)[0]

    def append_batch(
        self,
        dataset: str,
        feature_names: Sequence[str],
        features: np.ndarray,
        targets: Sequence[TargetValue],
        batch: IngestBatch,
    ) -> tuple[int, IngestProgress]:
        """Appends an ingest's batch as `append` appends rows, recorded in the same transaction, or nothing
        (BatchAlreadyStored, BatchOutOfTurn: server/storage/ingests.py); returns the dataset's row count and
        where the ingest resumes, both as the transaction left them."""
        total, progress = self._append(dataset, feature_names, features, targets, batch)
        assert progress is not None  # record_batch's answer
        return total, progress

    def _append(
        self,
        dataset: str,
        feature_names: Sequence[str],
        features: np.ndarray,
        targets: Sequence[TargetValue],
        batch: IngestBatch | None,
    ) -> tuple[int, IngestProgress | None]:
        given = list(feature_names)
        documents = list(zip(feature_documents(features), target_documents(targets), strict=True))
        with self.database.writing() as conn:
            self.database.lock_dataset(conn, dataset)
            progress = None if batch is None else record_batch(conn, dataset, batch)
            conn.execute(
                "INSERT INTO datasets (name, feature_names) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (dataset, json.dumps(given)),
            )
            names, column_types = _dataset_row(conn, dataset)
            fixed = list(names)
            if column_types is not None:
                raise InvalidArgument(f"dataset {dataset!r} has typed columns: send its rows as a table")
            if given and given != fixed:
                raise InvalidArgument(_other_names(dataset, fixed, given))
            # The newest id of any dataset, one index seek: this dataset's new rows are the ones above it.
            before = conn.execute("SELECT MAX(id) FROM data_history").fetchone()[0]
            conn.executemany(
                "INSERT INTO data_history (dataset, features, target) VALUES (?, ?, ?)",
                [(dataset, *document) for document in documents],
            )
            if documents:
                ids = _new_ids(conn, dataset, _FIRST if before is None else int(before), len(documents))
                _add_rows(conn, dataset, ids, features, list(targets))
            total = int(conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (dataset,)).fetchone()[0])
            return total, progress

    def feature_count(self, dataset: str) -> int | None:
        """The number of features of the dataset's first row, or None for an empty dataset: from its first
        segment, else (no binary copy) from its first JSON row."""
        with self.database.reading() as conn:
            segment = conn.execute(
                "SELECT feature_count FROM data_segments WHERE dataset = ? ORDER BY dataset, first_row_id LIMIT 1",
                (dataset,),
            ).fetchone()
            if segment is not None:
                return int(segment[0])
            row = conn.execute(
                "SELECT features FROM data_history WHERE dataset = ? ORDER BY dataset, id LIMIT 1", (dataset,)
            ).fetchone()
        return None if row is None else len(json.loads(row[0]))

    def load(self, dataset: str) -> Dataset | None:
        """Every row from its JSON document, in order: the Phase-4 way, and the way when no binary copy serves."""
        with self.database.reading() as conn:
            rows = conn.execute(
                "SELECT features, target FROM data_history WHERE dataset = ? ORDER BY id", (dataset,)
            ).fetchall()
            feature_names = _feature_names(conn, dataset)
        if not rows:
            return None
        return Dataset(
            name=dataset,
            feature_names=feature_names,
            features=[json.loads(row[0]) for row in rows],
            targets=[json.loads(row[1]) for row in rows],
        )

    def load_columns(self, dataset: str) -> DatasetColumns | None:
        """The dataset from its binary copy, in one snapshot; None when it has no rows, or when its segments
        do not copy every row (then `load` reads the JSON rows). Holds the matrix, its targets and at most
        FETCH_SEGMENTS segments' bytes at a time."""
        with self.database.snapshot() as conn:
            rows = int(conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (dataset,)).fetchone()[0])
            if rows == 0:
                return None
            kinds = conn.execute(
                "SELECT target_kind, SUM(row_count), MIN(feature_count), MAX(feature_count), MIN(features_format) "
                "FROM data_segments WHERE dataset = ? GROUP BY target_kind",
                (dataset,),
            ).fetchall()
            if any(row[4] != tables.F8 for row in kinds):
                logger.info("dataset %s has typed segments: a float64 matrix does not hold it (load_table)", dataset)
                return None
            copied = sum(int(row[1]) for row in kinds)
            widths = {int(row[2]) for row in kinds} | {int(row[3]) for row in kinds}
            if copied != rows or len(widths) != 1:
                logger.warning(
                    "dataset %s: its binary copy holds %d of its %d rows%s; reading its JSON rows instead",
                    dataset,
                    copied,
                    rows,
                    "" if len(widths) <= 1 else f" in widths {sorted(widths)}",
                )
                return None
            features = np.empty((rows, widths.pop()), dtype=np.float64)
            targets = _TargetColumn(rows, {row[0] for row in kinds})
            filled = 0
            for segment in _segments(conn, dataset):
                count = int(segment["row_count"])
                features[filled : filled + count] = decode_features(segment["features"], features.shape[1])
                targets.fill(filled, segment)
                filled += count
            return DatasetColumns(dataset, _feature_names(conn, dataset), features, targets.values)

    def schema(self, dataset: str) -> Schema | None:
        """The schema the dataset's rows fit: its column_types, else numbers named by its feature names (f0,
        f1, ... for a Phase-4 dataset without names); None for a dataset without rows."""
        with self.database.snapshot() as conn:
            return _schema(conn, dataset)

    def is_typed(self, dataset: str) -> bool:
        """Whether the dataset has a typed schema (datasets.column_types), rather than numbers only."""
        with self.database.reading() as conn:
            return _dataset_row(conn, dataset)[1] is not None

    def append_table(
        self, dataset: str, rows: TypedRows, batch: IngestBatch | None = None
    ) -> tuple[int, IngestProgress | None]:
        """Appends typed rows as JSON rows and an Arrow segment in one transaction, as `append` does numbers,
        with the ingest's batch when given; returns the dataset's row count and where the ingest resumes.

        A dataset's first rows fix its schema (datasets.column_types); rows of another schema store nothing.
        A numbers-only dataset whose rows have the same names becomes typed: its f8 segments stay as they are."""
        documents = list(zip(tables.row_documents(rows), target_documents(rows.targets), strict=True))
        with self.database.writing() as conn:
            self.database.lock_dataset(conn, dataset)
            progress = None if batch is None else record_batch(conn, dataset, batch)
            fixed = _schema(conn, dataset)
            if fixed is not None and fixed.columns != rows.schema.columns:
                raise InvalidArgument(tables.other_schema(dataset, fixed, rows.schema))
            stored = _dataset_row(conn, dataset)[1]
            missing = tables.read_types(stored)[1] or [0] * len(rows.schema.columns)
            added = rows.missing()
            types = tables.stored_types(rows.schema, [a + b for a, b in zip(missing, added, strict=True)])
            conn.execute(
                "INSERT INTO datasets (name, feature_names, column_types) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET column_types = excluded.column_types",
                (dataset, json.dumps(list(rows.schema.names)), types),
            )
            before = conn.execute("SELECT MAX(id) FROM data_history").fetchone()[0]
            conn.executemany(
                "INSERT INTO data_history (dataset, features, target) VALUES (?, ?, ?)",
                [(dataset, *document) for document in documents],
            )
            ids = _new_ids(conn, dataset, _FIRST if before is None else int(before), len(documents))
            width = len(rows.schema.columns)
            step = _rows_per_segment(width)
            tables.add_rows(conn, dataset, ids, rows, min(MERGE_BELOW_ROWS, step), step)
            total = int(conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (dataset,)).fetchone()[0])
            return total, progress

    def load_table(self, dataset: str) -> TypedDataset | None:
        """The dataset as a DataFrame of its schema's columns, in one snapshot: from its segments (f8 and Arrow
        alike) when they copy every row, else from its JSON rows; None when it has no rows."""
        with self.database.snapshot() as conn:
            return tables.load_table(conn, dataset, _schema(conn, dataset), _segments)

    def datasets(self) -> list[DatasetSummary]:
        """Every dataset with rows or a schema, by name: its columns with their missing counts, rows, targets."""
        with self.database.snapshot() as conn:
            return tables.summaries(conn)


class _TargetColumn:
    """The targets, filled segment by segment into the form every segment's kind allows."""

    def __init__(self, rows: int, kinds: set[str]) -> None:
        self.values: np.ndarray | list[TargetValue]
        if kinds <= NUMERIC_KINDS:
            self.values = np.empty(rows, dtype=np.int64 if kinds == {INT64} else np.float64)
        elif kinds == {LABELS}:
            self.values = np.empty(rows, dtype=object)
        else:
            self.values = []

    def fill(self, start: int, segment: Any) -> None:
        count = int(segment["row_count"])
        stored = (segment["target_kind"], segment["targets"], segment["target_labels"], count)
        if isinstance(self.values, np.ndarray):
            self.values[start : start + count] = decode_targets(*stored)
        else:
            self.values.extend(target_values(*stored))


def _segments(conn: Connection, dataset: str) -> Iterator[Any]:
    after = _FIRST
    while True:
        batch = conn.execute(
            f"SELECT {_SEGMENT_COLUMNS} FROM data_segments WHERE dataset = ? AND first_row_id > ? "
            "ORDER BY dataset, first_row_id LIMIT ?",
            (dataset, after, FETCH_SEGMENTS),
        ).fetchall()
        yield from batch
        if len(batch) < FETCH_SEGMENTS:
            return
        after = int(batch[-1]["first_row_id"])
        del batch  # before the next fetch, so that two batches are never held at once


def _new_ids(conn: Connection, dataset: str, before: int, count: int) -> Sequence[int]:
    """The ids of the dataset's `count` rows just appended, all above `before`: a range when they are
    consecutive (always on SQLite, where one writer at a time inserts them), else read one by one (PostgreSQL's
    sequence may interleave other datasets' rows)."""
    first, last, found = conn.execute(
        "SELECT MIN(id), MAX(id), COUNT(*) FROM data_history WHERE dataset = ? AND id > ?", (dataset, before)
    ).fetchone()
    if found == count and int(last) - int(first) + 1 == count:
        return range(int(first), int(last) + 1)
    rows = conn.execute(
        "SELECT id FROM data_history WHERE dataset = ? AND id > ? ORDER BY id", (dataset, before)
    ).fetchall()
    return [int(row[0]) for row in rows]


def _add_rows(conn: Connection, dataset: str, ids: Sequence[int], matrix: np.ndarray, targets: list[Any]) -> None:
    """Copies rows just appended (with their ids), into the dataset's last segment while both are small, else
    as new segments."""
    last = conn.execute(
        f"SELECT id, {_SEGMENT_COLUMNS} FROM data_segments WHERE dataset = ? "
        "ORDER BY dataset DESC, first_row_id DESC LIMIT 1",
        (dataset,),
    ).fetchone()
    width = matrix.shape[1]
    if (
        last is not None
        and int(last["row_count"]) + len(ids) <= min(MERGE_BELOW_ROWS, _rows_per_segment(width))
        and int(last["feature_count"]) == width
    ):
        stored = (last["target_kind"], last["targets"], last["target_labels"], int(last["row_count"]))
        conn.execute("DELETE FROM data_segments WHERE id = ?", (last["id"],))
        merged = np.concatenate([decode_features(last["features"], width), matrix])
        _insert_segment(conn, dataset, (int(last["first_row_id"]), ids[-1]), merged, target_values(*stored) + targets)
        return
    _insert_segments(conn, dataset, ids, matrix, targets)


def _insert_segments(
    conn: Connection, dataset: str, ids: Sequence[int], matrix: np.ndarray, targets: list[Any]
) -> None:
    step = _rows_per_segment(matrix.shape[1])
    for start in range(0, len(ids), step):
        end = min(start + step, len(ids))
        _insert_segment(conn, dataset, (ids[start], ids[end - 1]), matrix[start:end], targets[start:end])


def _rows_per_segment(width: int) -> int:
    return max(1, SEGMENT_BYTES // (8 * max(1, width)))


def _insert_segment(
    conn: Connection, dataset: str, rows: tuple[int, int], matrix: np.ndarray, targets: list[Any]
) -> None:
    encoded = encode_targets(targets)
    conn.execute(
        "INSERT INTO data_segments (dataset, first_row_id, last_row_id, row_count, feature_count, features, "
        "target_kind, targets, target_labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            dataset,
            *rows,
            len(targets),
            matrix.shape[1],
            encode_features(matrix),
            encoded.kind,
            encoded.data,
            encoded.labels,
        ),
    )


def copy_history(conn: Connection) -> None:
    """Migration 0007's second half: gives each dataset its datasets row if it has none (Phase-4 rows: no
    feature names, as before), and copies the rows data_history already holds into segments, dataset by
    dataset, reading COPY_CHUNK_ROWS JSON rows at a time, in the migration's transaction. A dataset whose
    rows would not train from the JSON path either (ragged, not numbers) gets no copy: Train keeps reading
    it, and failing, exactly as before."""
    for dataset in _datasets(conn):
        conn.execute(
            "INSERT INTO datasets (name, feature_names) VALUES (?, '[]') ON CONFLICT (name) DO NOTHING", (dataset,)
        )
        problem = _copy_dataset(conn, dataset)
        if problem:
            conn.execute("DELETE FROM data_segments WHERE dataset = ?", (dataset,))
            logger.warning("dataset %s keeps its JSON rows only (%s): Train reads those, as before", dataset, problem)


def _copy_dataset(conn: Connection, dataset: str) -> str:
    """Copies one dataset; returns what stopped it, or "". Reads whole segments' worth of rows at a time,
    so that the copy is cut into segments as an ingest of the same rows would be."""
    first = conn.execute(
        "SELECT features FROM data_history WHERE dataset = ? ORDER BY dataset, id LIMIT 1", (dataset,)
    ).fetchone()
    try:
        width = len(json.loads(first[0]))
    except (ValueError, TypeError) as exc:
        return f"its first row is not an array of numbers: {exc}"
    per_segment = _rows_per_segment(width)
    chunk = per_segment * max(1, COPY_CHUNK_ROWS // per_segment)
    after = _FIRST
    while True:
        rows = conn.execute(
            "SELECT id, features, target FROM data_history WHERE dataset = ? AND id > ? ORDER BY dataset, id LIMIT ?",
            (dataset, after, chunk),
        ).fetchall()
        if not rows:
            return ""
        try:
            matrix = np.asarray([json.loads(row[1]) for row in rows], dtype=np.float64)
            targets = [json.loads(row[2]) for row in rows]
        except (ValueError, TypeError, OverflowError) as exc:
            return f"a row is not an array of numbers: {exc}"
        if matrix.ndim != 2 or matrix.shape[1] == 0 or matrix.shape[1] != width:
            return "its rows do not all hold the same number of features"
        _insert_segments(conn, dataset, [int(row[0]) for row in rows], matrix, targets)
        after = int(rows[-1][0])


def _datasets(conn: Connection) -> list[str]:
    """Every dataset name, one index seek each (a loose scan of idx_data_history_dataset), not a scan of every row."""
    rows = conn.execute(
        """WITH RECURSIVE names (name) AS (
               SELECT MIN(dataset) FROM data_history
               UNION ALL
               SELECT (SELECT MIN(dataset) FROM data_history WHERE dataset > names.name) FROM names
                WHERE names.name IS NOT NULL)
           SELECT name FROM names WHERE name IS NOT NULL"""
    ).fetchall()
    return [row[0] for row in rows]


def _feature_names(conn: Connection, dataset: str) -> tuple[str, ...]:
    return _dataset_row(conn, dataset)[0]


def _other_names(dataset: str, fixed: list[str], given: list[str]) -> str:
    if not fixed:
        return f"dataset {dataset!r} has no feature names: its first rows gave none; these rows give {given}: send none"
    return (
        f"dataset {dataset!r} has the feature names {fixed}, fixed by its first rows; "
        f"these rows give {given}: send the same names or none"
    )
