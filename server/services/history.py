"""HistoryService: appends observations to a dataset in data_history, one batch at a time, all or nothing.

A batch of an ingest (an id the client chooses, and the batch's number) is recorded with its rows, so that
sending it again stores nothing twice: the answer says it was already stored, and where the ingest resumes.
Only the batch the ingest expects next is stored (its number the next one, its first row the count of rows
stored), and a batch sent again must hold the rows stored under its number; anything else is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from predserve.server.domain import Column, DatasetSummary, HistoryRow, TargetValue
from predserve.server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from predserve.server.services.typed_ingest import TableColumns, as_typed, numeric_matrix, typed_rows
from predserve.server.services.validation import (
    check_feature_names,
    check_finite,
    check_name,
    check_targets,
    feature_matrix,
)
from predserve.server.storage.history import HistoryRepository
from predserve.server.storage.ingests import (
    MAX_POSITION,
    BatchAlreadyStored,
    BatchOutOfTurn,
    IngestBatch,
    IngestProgress,
    IngestRepository,
    StoredBatch,
    content_sha256,
)
from predserve.server.storage.tables import TypedRows, table_sha256

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
    # Typed rows: named columns, the target among them (`target_column`), and the types the first ingest
    # declares rather than infers.
    table: TableColumns | None = None
    target_column: str = ""
    column_types: tuple[Column, ...] = ()

    @property
    def row_count(self) -> int:
        if self.table is not None:
            return self.table.row_count
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
        """Stores one batch all or nothing. A batch of an ingest that is already stored, with the same rows, is
        answered as such and stores nothing; an ingest's stream without rows asks where that ingest resumes."""
        check_name("dataset", upload.dataset)
        if not upload.ingest_id:
            rows = self._checked(upload)
            if isinstance(rows, TypedRows):
                total = self.history.append_table(upload.dataset, rows)[0]
            else:
                total = self.history.append(upload.dataset, *rows)
            return IngestOutcome(upload.dataset, upload.row_count, total)
        self._check_batch(upload)
        if upload.row_count == 0:
            return self._answer(upload, rows_added=0)
        rows = self._checked(upload)
        digest = table_sha256(rows) if isinstance(rows, TypedRows) else content_sha256(*rows[1:])
        batch = IngestBatch(upload.ingest_id, upload.batch_number, upload.first_row, upload.row_count, digest)
        stored = self.ingests.stored(batch.ingest_id, batch.number)
        if stored is None:
            try:
                if isinstance(rows, TypedRows):
                    total, progress = self.history.append_table(upload.dataset, rows, batch)
                    assert progress is not None  # record_batch's answer
                    after = progress
                else:
                    total, after = self.history.append_batch(upload.dataset, *rows, batch)
            except BatchAlreadyStored:  # the same batch, stored by a concurrent call meanwhile
                stored = self.ingests.stored(batch.ingest_id, batch.number)
                assert stored is not None
            except BatchOutOfTurn as refused:
                raise _out_of_turn(refused, upload.dataset) from None
            else:
                # The answer comes from the storing transaction: nothing read after the commit can fail the call.
                return IngestOutcome(
                    upload.dataset, batch.row_count, total, batch.ingest_id, batch.number, progress=after
                )
        self._check_same_batch(batch, upload.dataset, stored)
        return self._answer(upload, rows_added=0, already_stored=True)

    def _check_batch(self, upload: Upload) -> None:
        """The ingest id, and numbers the database and the answer can hold, before anything is stored."""
        if not INGEST_ID_PATTERN.match(upload.ingest_id):
            raise InvalidArgument(
                f"ingest id {upload.ingest_id!r} is not valid: use 1-128 letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit"
            )
        if not 0 <= upload.batch_number < MAX_POSITION:
            raise InvalidArgument(
                f"batch_number {upload.batch_number} is out of range: an ingest's batches are numbered 0, 1, 2, ... "
                f"below 2**62"
            )
        if not 0 <= upload.first_row <= MAX_POSITION - upload.row_count:
            raise InvalidArgument(
                f"first_row {upload.first_row} is out of range: an ingest's rows are counted from 0, and a batch's "
                f"rows (here {upload.row_count}) end at row 2**62 at most"
            )
        recorded = self.ingests.dataset_of(upload.ingest_id)
        if recorded is not None and recorded != upload.dataset:
            raise _other_dataset(upload.ingest_id, recorded, upload.dataset)

    def _check_same_batch(self, batch: IngestBatch, dataset: str, stored: StoredBatch) -> None:
        """A batch sent again must be the one stored: its dataset, place and rows. Batches recorded before
        migration 0009 have no digest of their rows: their place is all there is to compare them by."""
        if stored.dataset != dataset:
            raise _other_dataset(batch.ingest_id, stored.dataset, dataset)
        same_place = (stored.first_row, stored.row_count) == (batch.first_row, batch.row_count)
        if same_place and stored.content_sha256 in (None, batch.content_sha256):
            return
        progress = self.ingests.progress(batch.ingest_id)
        if same_place:
            difference = (
                f"was stored with other rows: its {stored.row_count} rows from row {stored.first_row} have SHA-256 "
                f"{(stored.content_sha256 or '')[:16]}..., this one's {batch.content_sha256[:16]}..."
            )
        else:
            difference = (
                f"was stored with {stored.row_count} rows from row {stored.first_row}; this one has "
                f"{batch.row_count} rows from row {batch.first_row}"
            )
        raise FailedPrecondition(
            f"batch {batch.number} of ingest {batch.ingest_id!r} {difference}: resume at batch "
            f"{progress.next_batch}, row {progress.next_row}, or use another ingest id"
        )

    def _answer(self, upload: Upload, rows_added: int, already_stored: bool = False) -> IngestOutcome:
        """The answer to an ingest's call that stored nothing, with where the ingest resumes."""
        progress = self.ingests.progress(upload.ingest_id)
        if max(progress.next_batch, progress.next_row) > MAX_POSITION:
            raise FailedPrecondition(
                f"ingest {upload.ingest_id!r} was recorded by an earlier release with batches beyond 2**62, which "
                "no answer can carry: use another ingest id"
            )
        return IngestOutcome(
            dataset=upload.dataset,
            rows_added=rows_added,
            total_rows=self.ingests.dataset_rows(upload.dataset),
            ingest_id=upload.ingest_id,
            batch_number=upload.batch_number,
            already_stored=already_stored,
            progress=progress,
        )

    def list_datasets(self) -> list[DatasetSummary]:
        return self.history.datasets()

    def _checked(self, upload: Upload) -> TypedRows | tuple[Sequence[str], np.ndarray, Sequence[TargetValue]]:
        """The batch validated: typed rows for a typed dataset or a table with strings or missing values, else
        feature names, a float64 matrix and its targets: the numbers path as it always was."""
        typed = self.history.is_typed(upload.dataset)
        if upload.table is None and not typed:
            return (upload.feature_names, *self._checked_rows(upload))
        if upload.row_count == 0:
            raise InvalidArgument("no rows given")
        check_batch_rows(upload.row_count, self.max_rows)
        schema = self.history.schema(upload.dataset)
        if upload.table is None:  # numbers for a dataset that became typed
            assert schema is not None
            matrix, targets = self._checked_rows(upload)
            return as_typed(schema, upload.feature_names, matrix, targets)
        rows = typed_rows(upload.table, upload.target_column, upload.column_types, schema, upload.first_row)
        numbers = None if typed else numeric_matrix(rows)
        if numbers is not None:  # numbers, none missing: stored as numbers, and the dataset stays numbers-only
            return rows.schema.names, numbers, rows.targets
        return rows

    def _checked_rows(self, upload: Upload) -> tuple[np.ndarray, Sequence[TargetValue]]:
        """The whole batch validated: its features as a float64 matrix, and its targets."""
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
        return matrix, targets


def _other_dataset(ingest_id: str, recorded: str, given: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"ingest {ingest_id!r} appends to dataset {recorded!r}, not {given!r}: use another ingest id"
    )


def _out_of_turn(refused: BatchOutOfTurn, dataset: str) -> FailedPrecondition:
    batch, expected = refused.batch, refused.expected
    if refused.dataset is not None and refused.dataset != dataset:
        return _other_dataset(batch.ingest_id, refused.dataset, dataset)
    return FailedPrecondition(
        f"batch {batch.number} of ingest {batch.ingest_id!r} is out of turn: expected batch {expected.next_batch} "
        f"with first_row {expected.next_row} (the rows the ingest has stored), got batch {batch.number} with "
        f"first_row {batch.first_row}: resume at batch {expected.next_batch}, row {expected.next_row}, or use "
        "another ingest id"
    )


def _checked_columns(matrix: np.ndarray, expected_features: int | None) -> np.ndarray:
    """The columns' checks of feature_matrix, on the whole array at once."""
    width = matrix.shape[1]
    if width == 0:
        raise InvalidArgument("row 0 has no features")
    if expected_features is not None and width != expected_features:
        raise InvalidArgument(f"row 0 has {width} features, expected {expected_features}")
    check_finite(matrix)
    return matrix
