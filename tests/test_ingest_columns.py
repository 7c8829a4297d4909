"""Batched ingest in process (issue 17, item 2): the CSV reader, the column encoding and its decoding, and the
recording of an ingest's batches, on a migrated SQLite file and on PostgreSQL. No server, no gRPC."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from predserve.client.batches import Batch, RowIterable
from predserve.client.csvfile import CsvFile, CsvFormatError
from predserve.protos import predserve_pb2 as pb
from predserve.server.api import converters
from predserve.server.domain import HistoryRow
from predserve.server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from predserve.server.services.history import HistoryService, Upload
from predserve.server.storage.databases import open_database
from predserve.server.storage.history import HistoryRepository
from predserve.server.storage.ingests import BatchAlreadyStored, IngestBatch, IngestProgress, content_sha256
from tests.test_data_rules import migrated


def decoded(batch: Batch, header: pb.IngestHistoryRequest | None = None) -> Upload:
    """What the server makes of a batch: its messages through the wire format and the converter."""
    wire = [m.SerializeToString() for m in batch.messages(header or pb.IngestHistoryRequest(dataset="d"))]
    return converters.ingest_upload((pb.IngestHistoryRequest.FromString(w) for w in wire), None)


def stored_rows(upload: Upload) -> list[tuple[list[float], object]]:
    if upload.columns is not None:
        return list(zip(upload.columns.features.tolist(), upload.columns.targets, strict=True))
    return [(list(row.features), row.target) for row in upload.rows]


TARGETS = {
    "integers": [0, 1, -5, 2**62],
    "numbers": [0.5, -1.25, 1e300, 3.0],
    "integers and numbers": [1, 2.5, 2**53, -0.0],
    "labels": ["a", "b", "", "ü"],
}


@pytest.mark.parametrize("kind", TARGETS)
def test_columns_carry_every_target_exactly_as_row_messages_do(kind: str) -> None:
    targets = TARGETS[kind]
    rows = [([float(i), i / 3], t) for i, t in enumerate(targets)]
    batch = Batch.of_rows(rows)
    assert batch.features is not None, "sent as columns"
    by_rows = decoded(Batch.as_row_messages(rows))
    by_columns = decoded(batch)
    assert stored_rows(by_columns) == stored_rows(by_rows) == [(f, t) for f, t in rows]
    assert [type(t) for _, t in stored_rows(by_columns)] == [type(t) for t in targets]


@pytest.mark.parametrize(
    "rows",
    [
        [([1.0, 2.0], 0), ([1.0], 1)],  # ragged
        [([1.0], "a"), ([2.0], 1)],  # a label among numbers
        [([1.0], True), ([2.0], 0)],  # a bool
        [([1.0], 2**60), ([2.0], 0.5)],  # an integer a float64 cannot hold beside numbers
    ],
    ids=["ragged", "labels and numbers", "bool", "huge int among numbers"],
)
def test_irregular_batches_travel_as_row_messages(rows: list) -> None:
    batch = Batch.of_rows(rows)
    assert batch.features is None and len(batch.rows) == len(rows)


def test_a_batch_is_split_into_bounded_messages_and_reassembled_in_order() -> None:
    rows = [([float(i)] * 100, i) for i in range(5000)]  # 4 MB of features
    messages = Batch.of_rows(rows).messages(pb.IngestHistoryRequest(dataset="d", ingest_id="i", batch_number=3))
    assert len(messages) == 4 and all(m.ByteSize() < 1.1 * 2**20 for m in messages)
    assert (messages[0].ingest_id, messages[0].batch_number, messages[1].ingest_id) == ("i", 3, "")
    assert stored_rows(decoded(Batch.of_rows(rows))) == rows


def test_malformed_columns_are_refused_with_the_row_at_fault() -> None:
    def refused(columns: pb.ColumnBatch) -> str:
        with pytest.raises(InvalidArgument) as error:
            converters.ingest_upload(iter([pb.IngestHistoryRequest(dataset="d", columns=columns)]), None)
        return str(error.value)

    two_rows = b"\0" * 16
    assert refused(pb.ColumnBatch(feature_count=1, features=two_rows)) == "row 0 has no target"
    assert "not whole rows" in refused(pb.ColumnBatch(feature_count=3, features=two_rows))
    one_target = pb.ColumnBatch(feature_count=1, features=two_rows, integer_targets=b"\0" * 8)
    assert refused(one_target) == "integer_targets holds 1 values for 2 rows"
    assert refused(pb.ColumnBatch(feature_count=0, features=two_rows)) == "row 0 has no features"
    both = pb.IngestHistoryRequest(
        dataset="d",
        rows=[pb.Row(features=[1.0], target=pb.Target(integer=0))],
        columns=pb.ColumnBatch(feature_count=1, features=b"\0" * 8, integer_targets=b"\0" * 8),
    )
    with pytest.raises(InvalidArgument, match="as Row messages or as columns, not both"):
        converters.ingest_upload(iter([both]), None)


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines))
    return path


def csv_rows(csv_file: CsvFile, batch_rows: int = 3, start_row: int = 0) -> list[tuple[list[float], object]]:
    return [row for batch in csv_file.batches(batch_rows, start_row) for row in stored_rows(decoded(batch))]


def test_a_csv_file_reads_as_the_csv_module_reads_it(tmp_path: Path) -> None:
    lines = ["a,y,b\r\n", "1,0,2\r\n", "\r\n", "3,1.5,4\n", " 5 ,1e3,6\n", "7,cat,8\n", "9,-2,1_0"]
    csv_file = CsvFile(write_csv(tmp_path / "plain.csv", lines), "y")
    expected = [([1.0, 2.0], 0), ([3.0, 4.0], 1.5), ([5.0, 6.0], 1000), ([7.0, 8.0], "cat"), ([9.0, 10.0], -2)]
    assert csv_file.feature_names == ["a", "b"]
    assert csv_rows(csv_file) == expected
    assert csv_rows(csv_file, batch_rows=100) == expected
    # Rows are counted without blank lines: a resumed ingest starts at the same row either way.
    assert csv_rows(csv_file, start_row=2) == expected[2:]
    assert csv_file.scan().rows == 6 and not csv_file.scan().quoted

    quoted = CsvFile(write_csv(tmp_path / "quoted.csv", ['"a","y","b"\n', '1,"x,\ny",2\n', "3,z,4\n"]), "y")
    assert quoted.scan().quoted
    assert csv_rows(quoted) == [([1.0, 2.0], "x,\ny"), ([3.0, 4.0], "z")]
    assert csv_rows(quoted, start_row=1) == [([3.0, 4.0], "z")]


def test_a_bad_csv_line_is_named(tmp_path: Path) -> None:
    bad = CsvFile(write_csv(tmp_path / "bad.csv", ["a,y\n", "1,0\n", "\n", "x,1\n"]), "y")
    with pytest.raises(CsvFormatError, match=r"bad\.csv:4: a feature is not a number$"):
        csv_rows(bad)
    short = CsvFile(write_csv(tmp_path / "short.csv", ["a,b,y\n", "1,2,0\n", "1,2\n"]), "y")
    with pytest.raises(CsvFormatError, match=r"short\.csv:3: 2 fields, the header has 3$"):
        csv_rows(short)
    with pytest.raises(CsvFormatError, match="no column 'label'; columns: a, b, y"):
        CsvFile(tmp_path / "short.csv", "label")
    with pytest.raises(CsvFormatError, match="is empty"):
        CsvFile(write_csv(tmp_path / "empty.csv", []), "y")


def test_the_default_ingest_id_follows_the_bytes_not_the_name(tmp_path: Path) -> None:
    one = CsvFile(write_csv(tmp_path / "one.csv", ["a,y\n", "1,0\n"]), "y")
    same = CsvFile(write_csv(tmp_path / "elsewhere.csv", ["a,y\n", "1,0\n"]), "y")
    edited = CsvFile(write_csv(tmp_path / "edited.csv", ["a,y\n", "1,1\n"]), "y")
    assert one.ingest_id("d") == same.ingest_id("d")
    assert len({one.ingest_id("d"), one.ingest_id("e"), edited.ingest_id("d")}) == 3


def test_resuming_an_iterable_passes_over_the_stored_rows() -> None:
    rows = [([float(i)], i) for i in range(10)]
    resumed = [row for batch in RowIterable(iter(rows)).batches(4, start_row=6) for row in stored_rows(decoded(batch))]
    assert resumed == rows[6:]


def at(next_batch: int, next_row: int) -> IngestProgress:
    return IngestProgress(next_batch, next_row)


ROWS = [HistoryRow((float(i), 1.0), i % 2) for i in range(6)]
FIRST_THREE = np.asarray([row.features for row in ROWS[:3]])


@pytest.fixture
def history(tmp_path: Path) -> HistoryService:
    return HistoryService(HistoryRepository(migrated(tmp_path / "ingests.db")), max_rows=4)


@pytest.fixture
def postgres_history(postgres_url: str) -> Iterator[HistoryService]:
    database = migrated(postgres_url)
    yield HistoryService(HistoryRepository(database), max_rows=4)
    database.close()


def batch(number: int, rows: list[HistoryRow], first_row: int, ingest_id: str = "file-1", dataset: str = "d") -> Upload:
    return Upload(dataset, ["a", "b"], rows=rows, ingest_id=ingest_id, batch_number=number, first_row=first_row)


def check_batches_are_stored_once(history: HistoryService) -> None:
    probe = history.ingest_upload(batch(0, [], 0))
    assert (probe.rows_added, probe.total_rows, probe.progress) == (0, 0, at(0, 0))
    first = history.ingest_upload(batch(0, ROWS[:3], 0))
    assert (first.rows_added, first.total_rows, first.already_stored, first.progress) == (3, 3, False, at(1, 3))
    again = history.ingest_upload(batch(0, ROWS[:3], 0))
    assert (again.rows_added, again.total_rows, again.already_stored, again.progress) == (0, 3, True, at(1, 3))
    second = history.ingest_upload(batch(1, ROWS[3:], 3))
    assert (second.total_rows, second.progress) == (6, at(2, 6))
    assert history.ingest_upload(batch(0, [], 0)).progress == at(2, 6)
    # Another ingest appends the same rows again: the id, not the rows, says what is a repeat.
    assert history.ingest_upload(batch(0, ROWS[:3], 0, ingest_id="file-2")).total_rows == 9
    loaded = history.history.load("d")
    assert loaded is not None and len(loaded.targets) == 9


def test_a_batch_sent_again_is_answered_as_stored_and_adds_nothing(history: HistoryService) -> None:
    check_batches_are_stored_once(history)


def test_a_batch_sent_again_adds_nothing_on_postgres(postgres_history: HistoryService) -> None:
    check_batches_are_stored_once(postgres_history)


def test_a_batch_recorded_meanwhile_rolls_its_rows_back(history: HistoryService) -> None:
    """Two calls with the same batch at once: both find it unstored; the key lets one in, the other stores nothing."""
    repository = history.history
    recorded = IngestBatch("file-1", 0, 0, 3, content_sha256(FIRST_THREE, [0, 1, 0]))
    assert repository.append_batch("d", [], FIRST_THREE, [0, 1, 0], recorded) == (3, at(1, 3))
    with pytest.raises(BatchAlreadyStored):
        repository.append_batch("d", [], FIRST_THREE, [0, 1, 0], recorded)
    loaded = repository.load("d")
    assert loaded is not None and len(loaded.targets) == 3


def test_an_inconsistent_batch_is_refused_and_says_where_to_resume(history: HistoryService) -> None:
    history.ingest_upload(batch(0, ROWS[:3], 0))
    with pytest.raises(FailedPrecondition) as moved:
        history.ingest_upload(batch(0, ROWS[:2], 1))
    assert str(moved.value) == (
        "batch 0 of ingest 'file-1' was stored with 3 rows from row 0; this one has 2 rows from row 1: "
        "resume at batch 1, row 3, or use another ingest id"
    )
    with pytest.raises(FailedPrecondition, match="ingest 'file-1' appends to dataset 'd', not 'e'"):
        history.ingest_upload(batch(1, ROWS[3:], 3, dataset="e"))
    with pytest.raises(InvalidArgument, match="ingest id 'a b' is not valid"):
        history.ingest_upload(batch(0, ROWS[:1], 0, ingest_id="a b"))


def test_only_the_next_batch_from_the_next_row_is_stored(history: HistoryService) -> None:
    history.ingest_upload(batch(0, ROWS[:2], 0))
    with pytest.raises(FailedPrecondition) as gap:
        history.ingest_upload(batch(2, ROWS[4:], 4))
    assert str(gap.value) == (
        "batch 2 of ingest 'file-1' is out of turn: expected batch 1 with first_row 2 (the rows the ingest has "
        "stored), got batch 2 with first_row 4: resume at batch 1, row 2, or use another ingest id"
    )
    with pytest.raises(FailedPrecondition, match="expected batch 1 with first_row 2 .*, got batch 1 with first_row 3"):
        history.ingest_upload(batch(1, ROWS[3:], 3))
    assert history.ingest_upload(batch(0, [], 0)).progress == at(1, 2)
    assert history.ingest_upload(batch(1, ROWS[2:4], 2)).progress == at(2, 4)
    assert history.ingest_upload(batch(2, ROWS[4:], 4)).total_rows == 6


def check_batches_are_taken_in_turn(history: HistoryService) -> None:
    """Out of turn, out of range or other rows under a stored number: refused, and nothing stored."""
    history.ingest_upload(batch(0, ROWS[:2], 0))
    with pytest.raises(FailedPrecondition, match="expected batch 1 with first_row 2 .*, got batch 1 with first_row 5"):
        history.ingest_upload(batch(1, ROWS[2:4], 5))
    with pytest.raises(FailedPrecondition, match="expected batch 1 with first_row 2 .*, got batch 3 with first_row 2"):
        history.ingest_upload(batch(3, ROWS[2:4], 2))
    with pytest.raises(InvalidArgument, match=r"batch_number 9223372036854775807 is out of range"):
        history.ingest_upload(batch(2**63 - 1, ROWS[2:4], 2))
    with pytest.raises(InvalidArgument, match=r"first_row 9223372036854775806 is out of range"):
        history.ingest_upload(batch(1, ROWS[2:4], 2**63 - 2))
    with pytest.raises(FailedPrecondition, match="batch 0 of ingest 'file-1' was stored with other rows"):
        history.ingest_upload(batch(0, ROWS[4:], 0))
    assert history.ingest_upload(batch(0, [], 0)).progress == at(1, 2)
    loaded = history.history.load("d")
    assert loaded is not None and loaded.features == [list(row.features) for row in ROWS[:2]]


def test_batches_are_taken_in_turn(history: HistoryService) -> None:
    check_batches_are_taken_in_turn(history)


def test_batches_are_taken_in_turn_on_postgres(postgres_history: HistoryService) -> None:
    check_batches_are_taken_in_turn(postgres_history)


def test_replicas_sending_the_same_batches_at_once_store_each_row_once_on_postgres(postgres_url: str) -> None:
    """Each replica has its own pool: only the database's lock and key can keep the batches in turn."""
    migrated(postgres_url).close()
    replicas = [HistoryService(HistoryRepository(open_database(postgres_url)), max_rows=4) for _ in range(4)]
    rows = [HistoryRow((float(i), 0.0), i % 2) for i in range(12)]
    answers: list[tuple[int, bool]] = []
    errors: list[BaseException] = []
    go = threading.Barrier(len(replicas))

    def send(replica: HistoryService) -> None:
        go.wait()
        try:
            for number in range(6):
                outcome = replica.ingest_upload(batch(number, rows[2 * number : 2 * number + 2], 2 * number))
                answers.append((number, outcome.already_stored))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert sorted(number for number, again in answers if not again) == list(range(6))  # each stored once
        assert replicas[0].ingest_upload(batch(0, [], 0)).progress == at(6, 12)
        loaded = replicas[0].history.load("d")
        assert loaded is not None and loaded.features == [list(row.features) for row in rows]
    finally:
        for replica in replicas:
            replica.history.database.close()


def test_a_gap_left_by_an_earlier_release_is_where_the_ingest_resumes(history: HistoryService) -> None:
    history.ingest_upload(batch(0, ROWS[:2], 0))
    with history.history.database.writing() as conn:  # batch 2, stored out of turn as releases before 0009 did
        conn.execute(
            "INSERT INTO ingest_batches (ingest_id, batch_number, dataset, first_row, row_count) "
            "VALUES ('file-1', 2, 'd', 4, 2)"
        )
    assert history.ingest_upload(batch(0, [], 0)).progress == at(1, 2)
    assert history.ingest_upload(batch(1, ROWS[2:4], 2)).progress == at(3, 6)


def test_an_ingest_an_earlier_release_recorded_beyond_int64_is_refused_not_answered(history: HistoryService) -> None:
    """Its next row does not fit the answer's int64: a clear refusal, where converting the answer failed."""
    history.ingest_upload(batch(0, ROWS[:2], 0))
    with history.history.database.writing() as conn:  # as releases before 0009 stored first_row 2**63 - 2
        conn.execute(
            "INSERT INTO ingest_batches (ingest_id, batch_number, dataset, first_row, row_count) "
            "VALUES ('file-1', 1, 'd', 9223372036854775806, 2)"
        )
    with pytest.raises(FailedPrecondition, match="ingest 'file-1' was recorded by an earlier release with batches"):
        history.ingest_upload(batch(0, [], 0))
    assert history.ingest_upload(batch(0, ROWS[:2], 0, ingest_id="file-2")).progress == at(1, 2)


def test_a_batch_recorded_before_checksums_is_compared_by_its_place(history: HistoryService) -> None:
    history.ingest_upload(batch(0, ROWS[:3], 0))
    with history.history.database.writing() as conn:  # as migration 0009 leaves the batches recorded before it
        conn.execute("UPDATE ingest_batches SET content_sha256 = NULL")
    again = history.ingest_upload(batch(0, ROWS[3:], 0))  # other rows, in the same place: nothing tells them apart
    assert (again.already_stored, again.total_rows, again.progress) == (True, 3, at(1, 3))
    with pytest.raises(FailedPrecondition, match="was stored with 3 rows from row 0; this one has 2 rows from row 0"):
        history.ingest_upload(batch(0, ROWS[:2], 0))


def test_a_batch_sent_again_with_other_rows_is_refused(history: HistoryService) -> None:
    history.ingest_upload(batch(0, ROWS[:3], 0))
    stored = content_sha256(FIRST_THREE, [0, 1, 0])
    with pytest.raises(FailedPrecondition) as other:
        history.ingest_upload(batch(0, ROWS[3:], 0))
    assert str(other.value).startswith(
        f"batch 0 of ingest 'file-1' was stored with other rows: its 3 rows from row 0 have SHA-256 {stored[:16]}..., "
    )
    assert str(other.value).endswith("...: resume at batch 1, row 3, or use another ingest id")
    # The same rows as columns are the same batch: the digest is of the values, not of their wire form.
    as_columns = decoded(
        Batch.of_rows([(row.features, row.target) for row in ROWS[:3]]),
        pb.IngestHistoryRequest(dataset="d", feature_names=["a", "b"], ingest_id="file-1"),
    )
    assert as_columns.columns is not None
    assert history.ingest_upload(as_columns).already_stored
    loaded = history.history.load("d")
    assert loaded is not None and len(loaded.targets) == 3


def test_the_row_limit_applies_per_batch_and_says_how_to_proceed(history: HistoryService) -> None:
    with pytest.raises(ResourceExhausted) as error:
        history.ingest_upload(batch(0, ROWS[:5], 0))
    assert str(error.value) == (
        "this IngestHistory batch has 5 rows so far, more than the limit of 4 rows per batch "
        "(--max-rows-per-request): send at most 4 rows per IngestHistory stream, as consecutive batches; "
        "the predserve CLI and client library batch for you"
    )
    assert history.ingest_upload(batch(0, [], 0)).progress == at(0, 0)  # nothing was recorded


def test_columns_are_checked_as_row_messages_are(history: HistoryService) -> None:
    history.ingest("d", [], ROWS[:2])

    def refused(rows: list) -> str:
        with pytest.raises(InvalidArgument) as error:
            history.ingest_upload(decoded(Batch.of_rows(rows)))
        return str(error.value)

    assert refused([([1.0, 2.0, 3.0], 0)]) == "row 0 has 3 features, expected 2"
    assert refused([([1.0, 2.0], 0), ([math.nan, 2.0], 1)]) == "row 1 holds a non-finite value (NaN or infinity)"
    assert refused([([1.0, 2.0], 0.5), ([2.0, 2.0], math.inf)]) == "row 1 has a non-finite target"
