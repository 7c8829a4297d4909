"""ingest_batches: which batches of which ingest are stored, so that none is appended twice.

A client sends a large file as consecutive batches of one ingest (an id it chooses) and numbers them.
`record_batch` runs in the very transaction that appends a batch's rows (HistoryRepository.append): the
primary key (ingest_id, batch_number) lets one of two copies of a batch in, and the other raises
BatchAlreadyStored, which rolls its rows back with it. A crash before the commit loses both the rows and
the record; after it, both are there. IngestRepository answers where an ingest resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.storage.databases import Connection, RegistryDatabase


@dataclass(frozen=True)
class IngestBatch:
    """One batch of an ingest: its number and the position of its first row among the ingest's rows."""

    ingest_id: str
    number: int
    first_row: int
    row_count: int


@dataclass(frozen=True)
class StoredBatch:
    dataset: str
    first_row: int
    row_count: int


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


def record_batch(conn: Connection, dataset: str, batch: IngestBatch) -> None:
    """Records a batch in the caller's transaction; BatchAlreadyStored if it was recorded before (on
    PostgreSQL, after waiting for a concurrent transaction that records it to end)."""
    inserted = conn.execute(
        "INSERT INTO ingest_batches (ingest_id, batch_number, dataset, first_row, row_count) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (ingest_id, batch_number) DO NOTHING RETURNING batch_number",
        (batch.ingest_id, batch.number, dataset, batch.first_row, batch.row_count),
    ).fetchall()
    if not inserted:
        raise BatchAlreadyStored(batch)


class IngestRepository:
    """Reads of ingest_batches, each through its primary key."""

    def __init__(self, database: RegistryDatabase) -> None:
        self.database = database

    def stored(self, ingest_id: str, number: int) -> StoredBatch | None:
        with self.database.reading() as conn:
            row = conn.execute(
                "SELECT dataset, first_row, row_count FROM ingest_batches WHERE ingest_id = ? AND batch_number = ?",
                (ingest_id, number),
            ).fetchone()
        return None if row is None else StoredBatch(row[0], int(row[1]), int(row[2]))

    def dataset_of(self, ingest_id: str) -> str | None:
        """The dataset an ingest's batches went to, None for an ingest with no stored batch."""
        with self.database.reading() as conn:
            row = conn.execute(
                "SELECT dataset FROM ingest_batches WHERE ingest_id = ? ORDER BY batch_number LIMIT 1", (ingest_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def progress(self, ingest_id: str) -> IngestProgress:
        """After the stored batches 0..k-1: batch k, at the row after batch k-1's. Batches are sent in turn,
        so the stored ones are such a prefix; if a client left a gap, the ingest resumes at the gap."""
        with self.database.snapshot() as conn:
            count, highest = conn.execute(
                "SELECT COUNT(*), MAX(batch_number) FROM ingest_batches WHERE ingest_id = ?", (ingest_id,)
            ).fetchone()
            if not count:
                return IngestProgress(0, 0)
            next_batch = int(highest) + 1
            if int(count) != next_batch:
                numbers = conn.execute(
                    "SELECT batch_number FROM ingest_batches WHERE ingest_id = ? ORDER BY batch_number", (ingest_id,)
                ).fetchall()
                next_batch = next(n for n, row in enumerate(numbers) if int(row[0]) != n)
            if next_batch == 0:
                return IngestProgress(0, 0)
            first_row, row_count = conn.execute(
                "SELECT first_row, row_count FROM ingest_batches WHERE ingest_id = ? AND batch_number = ?",
                (ingest_id, next_batch - 1),
            ).fetchone()
        return IngestProgress(next_batch, int(first_row) + int(row_count))

    def dataset_rows(self, dataset: str) -> int:
        with self.database.reading() as conn:
            row = conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (dataset,)).fetchone()
        return int(row[0])
