"""HistoryService: appends observations to a dataset in data_history, one batch at a time, all or nothing.

A batch of an ingest (an id the client chooses, and the batch's number) is recorded with its rows, so that
sending it again stores nothing twice: the answer says it was already stored, and where the ingest resumes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.domain import HistoryRow, TargetValue
from server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from server.services.validation import check_feature_names, check_finite, check_name, check_targets, feature_matrix
from server.storage.ingests import BatchAlreadyStored, IngestBatch, IngestProgress, IngestRepository, StoredBatch
from server.storage.repositories import HistoryRepository

# An ingest id goes into log lines and error messages: printable, no spaces, bounded.
INGEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class ColumnRows:
    """Rows sent as columns: a (rows, features) float64 matrix and one target per row."""

    features: np.ndarray
    targets: list[TargetValue]


@dataclass(frozen=True)
class Upload:
    """One IngestHistory stream: rows for a dataset, as Row messages or as columns, and which batch of
    which ingest they are (no ingest_id: an unrecorded append, as earlier clients send)."""

    dataset: str
    feature_names: Sequence[str]
    rows: Sequence[HistoryRow] = ()
    columns: ColumnRows | None = None
    ingest_id: str = ""
    batch_number: int = 0
    first_row: int = 0

    @property
    def row_count(self) -> int:
        return len(self.columns.targets) if self.columns is not None else len(self.rows)


@dataclass(frozen=True)
class IngestOutcome:
    dataset: str
    rows_added: int
    total_rows: int
    ingest_id: str = ""
    batch_number: int = 0
    already_stored: bool = False
    progress: IngestProgress | None = None


def check_batch_rows(count: int, limit: int | None) -> None:
    """The server's defence against one huge stream: a batch holds at most `limit` rows."""
    if limit is not None and count > limit:
        raise ResourceExhausted(
            f"this IngestHistory batch has {count} rows so far, more than the limit of {limit} rows per batch "
            f"(--max-rows-per-request): send at most {limit} rows per IngestHistory stream, as consecutive "
            "batches; the predserve CLI and client library batch for you"
        )


class HistoryService:
    def __init__(
        self, history: HistoryRepository, max_rows: int | None = None, ingests: IngestRepository | None = None
    ) -> None:
        self.history = history
        self.max_rows = max_rows
        # A batch is recorded in the transaction that appends its rows: the ingests live in the same database.
        self.ingests = ingests if ingests is not None else IngestRepository(history.database)

    def ingest(self, dataset: str, feature_names: Sequence[str], rows: Sequence[HistoryRow]) -> int:
        """Validates every row first, then stores them in one transaction; returns the dataset's size."""
        return self.ingest_upload(Upload(dataset, feature_names, rows=rows)).total_rows

    def ingest_upload(self, upload: Upload) -> IngestOutcome:
        """Stores one batch all or nothing. A batch of an ingest that is already stored is answered as such
        and stores nothing; an ingest's stream without rows asks where that ingest resumes."""
        check_name("dataset", upload.dataset)
        if not upload.ingest_id:
            total = self._append(upload, None)
            return IngestOutcome(upload.dataset, upload.row_count, total)
        batch = self._batch(upload)
        if batch.row_count == 0:
            return self._answer(upload, rows_added=0)
        stored = self.ingests.stored(batch.ingest_id, batch.number)
        if stored is None:
            try:
                total = self._append(upload, batch)
                return self._answer(upload, rows_added=batch.row_count, total_rows=total)
            except BatchAlreadyStored:  # the same batch, stored by a concurrent call meanwhile
                stored = self.ingests.stored(batch.ingest_id, batch.number)
                assert stored is not None
        self._check_same_batch(batch, stored)
        return self._answer(upload, rows_added=0, already_stored=True)

    def _batch(self, upload: Upload) -> IngestBatch:
        if not INGEST_ID_PATTERN.match(upload.ingest_id):
            raise InvalidArgument(
                f"ingest id {upload.ingest_id!r} is not valid: use 1-128 letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit"
            )
        if upload.batch_number < 0 or upload.first_row < 0:
            raise InvalidArgument("batch_number and first_row count from 0")
        recorded = self.ingests.dataset_of(upload.ingest_id)
        if recorded is not None and recorded != upload.dataset:
            raise FailedPrecondition(
                f"ingest {upload.ingest_id!r} appends to dataset {recorded!r}, not {upload.dataset!r}: "
                "use another ingest id"
            )
        return IngestBatch(upload.ingest_id, upload.batch_number, upload.first_row, upload.row_count)

    def _check_same_batch(self, batch: IngestBatch, stored: StoredBatch) -> None:
        if (stored.first_row, stored.row_count) == (batch.first_row, batch.row_count):
            return
        progress = self.ingests.progress(batch.ingest_id)
        raise FailedPrecondition(
            f"batch {batch.number} of ingest {batch.ingest_id!r} was stored with {stored.row_count} rows from row "
            f"{stored.first_row}; this one has {batch.row_count} rows from row {batch.first_row}: resume at batch "
            f"{progress.next_batch}, row {progress.next_row}, or use another ingest id"
        )

    def _answer(
        self, upload: Upload, rows_added: int, already_stored: bool = False, total_rows: int | None = None
    ) -> IngestOutcome:
        """The answer to an ingest's call; `total_rows` as the append just counted it, else counted now."""
        return IngestOutcome(
            dataset=upload.dataset,
            rows_added=rows_added,
            total_rows=self.ingests.dataset_rows(upload.dataset) if total_rows is None else total_rows,
            ingest_id=upload.ingest_id,
            batch_number=upload.batch_number,
            already_stored=already_stored,
            progress=self.ingests.progress(upload.ingest_id),
        )

    def _append(self, upload: Upload, batch: IngestBatch | None) -> int:
        """Validates the whole batch, then appends it (and records it, for an ingest's batch) in one transaction."""
        count = upload.row_count
        if count == 0:
            raise InvalidArgument("no rows given")
        check_batch_rows(count, self.max_rows)
        existing_width = self.history.feature_count(upload.dataset)
        if upload.columns is not None:
            matrix = _checked_columns(upload.columns.features, existing_width)
            targets = upload.columns.targets
        else:
            matrix = feature_matrix([row.features for row in upload.rows], existing_width)
            targets = [row.target for row in upload.rows]
        width = matrix.shape[1]
        if upload.feature_names and len(upload.feature_names) != width:
            raise InvalidArgument(f"{len(upload.feature_names)} feature names given for {width} features")
        check_feature_names(upload.feature_names)
        check_targets(targets)
        return self.history.append(upload.dataset, upload.feature_names, matrix, targets, batch=batch)


def _checked_columns(matrix: np.ndarray, expected_features: int | None) -> np.ndarray:
    """The columns' checks of feature_matrix, on the whole array at once."""
    width = matrix.shape[1]
    if width == 0:
        raise InvalidArgument("row 0 has no features")
    if expected_features is not None and width != expected_features:
        raise InvalidArgument(f"row 0 has {width} features, expected {expected_features}")
    check_finite(matrix)
    return matrix
