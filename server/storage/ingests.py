"""ingest_batches: which batches of which ingest are stored, so that none is appended twice or out of turn.

A client sends a large file as consecutive batches of one ingest (an id it chooses) and numbers them.
`record_batch` runs in the very transaction that appends a batch's rows (HistoryRepository.append): it lets
in only the batch the ingest expects next (BatchOutOfTurn), and the primary key (ingest_id, batch_number)
lets one of two copies of a batch in while the other raises BatchAlreadyStored; either error rolls the rows
back with it. A crash before the commit loses both the rows and the record; after it, both are there.
IngestRepository answers where an ingest resumes, and what a stored batch held (its content's SHA-256).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from predserve.server.domain import TargetValue
from predserve.server.storage.columns import FEATURE_DTYPE, encode_targets
from predserve.server.storage.databases import Connection, RegistryDatabase

# Batch numbers and rows are counted below this bound, far beyond any ingest: the number after a batch and the
# row after its last one then always fit the int64 of the columns and of the proto's fields.
MAX_POSITION = 2**62


@dataclass(frozen=True)
class IngestBatch:
    """One batch of an ingest: its number, the position of its first row among the ingest's rows, and the
    SHA-256 of its rows (content_sha256)."""

    ingest_id: str
    number: int
    first_row: int
    row_count: int
    content_sha256: str


@dataclass(frozen=True)
class StoredBatch:
    dataset: str
    first_row: int
    row_count: int
    content_sha256: str | None  # None: recorded before migration 0009


@dataclass(frozen=True)
class IngestProgress:
    """Where an ingest resumes: the first batch number it has not stored, and the row that batch starts at."""

    next_batch: int
    next_row: int


class BatchAlreadyStored(Exception):
    """Raised inside the appending transaction, so that it rolls back: the batch was stored before."""

    def __init__(self, batch: IngestBatch) -> None:
        super().__init__(f"batch {batch.number} of ingest {batch.ingest_id!r} is already stored")
        self.batch = batch


class BatchOutOfTurn(Exception):
    """Raised inside the appending transaction, so that it rolls back: the ingest expects another batch
    (`expected`), or its batches go to another dataset (`dataset`, None for an ingest with none stored)."""

    def __init__(self, batch: IngestBatch, expected: IngestProgress, dataset: str | None) -> None:
        super().__init__(
            f"batch {batch.number} from row {batch.first_row} of ingest {batch.ingest_id!r} is out of turn: "
            f"expected batch {expected.next_batch} from row {expected.next_row}"
        )
        self.batch = batch
        self.expected = expected
        self.dataset = dataset


def content_sha256(features: np.ndarray, targets: Sequence[TargetValue]) -> str:
    """The SHA-256 of a batch's rows: its shape, its features as little-endian float64 and its targets as
    data_segments encodes them (server/storage/columns.py), each part preceded by its length. The same rows
    give the same digest whether they came as Row messages or as columns."""
    matrix = np.ascontiguousarray(features, dtype=FEATURE_DTYPE)
    encoded = encode_targets(list(targets))
    digest = hashlib.sha256(b"predserve ingest batch v1\0")
    shape = np.asarray(matrix.shape, dtype="<i8").tobytes()
    for part in (shape, matrix.data, encoded.kind.encode(), encoded.data, (encoded.labels or "").encode()):
        view = memoryview(part)  # the matrix's bytes as they are, not a copy
        digest.update(view.nbytes.to_bytes(8, "little"))
        digest.update(view)
    return digest.hexdigest()


def record_batch(conn: Connection, dataset: str, batch: IngestBatch) -> IngestProgress:
    """Records a batch in the caller's transaction (which holds the dataset's lock); returns where the ingest
    resumes after it. BatchAlreadyStored if its number was recorded before (on PostgreSQL, after waiting for a
    concurrent transaction that records it to end); BatchOutOfTurn unless it is the batch the ingest expects
    next, in the dataset of its other batches."""
    if _stored(conn, batch.ingest_id, batch.number) is not None:
        raise BatchAlreadyStored(batch)
    expected, recorded = _position(conn, batch.ingest_id)
    if (batch.number, batch.first_row) != (expected.next_batch, expected.next_row) or recorded not in (None, dataset):
        raise BatchOutOfTurn(batch, expected, recorded)
    inserted = conn.execute(
        "INSERT INTO ingest_batches (ingest_id, batch_number, dataset, first_row, row_count, content_sha256) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (ingest_id, batch_number) DO NOTHING RETURNING batch_number",
        (batch.ingest_id, batch.number, dataset, batch.first_row, batch.row_count, batch.content_sha256),
    ).fetchall()
    if not inserted:
        raise BatchAlreadyStored(batch)
    if _stored(conn, batch.ingest_id, batch.number + 1) is not None:  # it filled a gap an earlier release left
        return _position(conn, batch.ingest_id)[0]
    return IngestProgress(batch.number + 1, batch.first_row + batch.row_count)


def _stored(conn: Connection, ingest_id: str, number: int) -> StoredBatch | None:
    row = conn.execute(
        "SELECT dataset, first_row, row_count, content_sha256 FROM ingest_batches "
        "WHERE ingest_id = ? AND batch_number = ?",
        (ingest_id, number),
    ).fetchone()
    return None if row is None else StoredBatch(row[0], int(row[1]), int(row[2]), row[3])


def _position(conn: Connection, ingest_id: str) -> tuple[IngestProgress, str | None]:
    """Where the ingest resumes, and the dataset of its batches. After the stored batches 0..k-1: batch k, at
    the row after batch k-1's. record_batch keeps the stored batches such a prefix; where a release before it
    left a gap, the ingest resumes at the gap."""
    count, highest = conn.execute(
        "SELECT COUNT(*), MAX(batch_number) FROM ingest_batches WHERE ingest_id = ?", (ingest_id,)
    ).fetchone()
    if not count:
        return IngestProgress(0, 0), None
    next_batch = int(highest) + 1
    if int(count) != next_batch:
        numbers = conn.execute(
            "SELECT batch_number FROM ingest_batches WHERE ingest_id = ? ORDER BY batch_number", (ingest_id,)
        ).fetchall()
        next_batch = next(n for n, row in enumerate(numbers) if int(row[0]) != n)
    if next_batch == 0:
        any_batch = conn.execute(
            "SELECT dataset FROM ingest_batches WHERE ingest_id = ? ORDER BY batch_number LIMIT 1", (ingest_id,)
        ).fetchone()
        return IngestProgress(0, 0), str(any_batch[0])
    first_row, row_count, dataset = conn.execute(
        "SELECT first_row, row_count, dataset FROM ingest_batches WHERE ingest_id = ? AND batch_number = ?",
        (ingest_id, next_batch - 1),
    ).fetchone()
    return IngestProgress(next_batch, int(first_row) + int(row_count)), str(dataset)


class IngestRepository:
    """Reads of ingest_batches, each through its primary key."""

    def __init__(self, database: RegistryDatabase) -> None:
        self.database = database

    def stored(self, ingest_id: str, number: int) -> StoredBatch | None:
        with self.database.reading() as conn:
            return _stored(conn, ingest_id, number)

    def dataset_of(self, ingest_id: str) -> str | None:
        """The dataset an ingest's batches went to, None for an ingest with no stored batch."""
        with self.database.reading() as conn:
            row = conn.execute(
                "SELECT dataset FROM ingest_batches WHERE ingest_id = ? ORDER BY batch_number LIMIT 1", (ingest_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def progress(self, ingest_id: str) -> IngestProgress:
        """Where the ingest resumes: the one batch record_batch would let in next."""
        with self.database.snapshot() as conn:
            return _position(conn, ingest_id)[0]

    def dataset_rows(self, dataset: str) -> int:
        with self.database.reading() as conn:
            row = conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (dataset,)).fetchone()
        return int(row[0])
