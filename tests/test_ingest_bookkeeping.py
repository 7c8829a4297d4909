"""Ingest bookkeeping that checks what it is told (issue 22, items 6 and 7): a real server, a real SQLite file.

A batch is stored only in turn (its number the next one, its first row the count of rows stored); a batch sent
again is already stored only if it holds the stored rows; numbers the database or the answer cannot hold are
refused before anything is stored; feature names are printable text of at most 200 characters.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest

from predserve.client.library import PredserveClientError
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.support import ServerProcess
from tests.test_cli import cli
from tests.test_ingest_batches import columns_request, stored_numbers

INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("ingest-bookkeeping")).start()
    yield process
    process.kill()


def call(server: ServerProcess, *messages: pb.IngestHistoryRequest) -> pb.IngestHistoryResponse:
    with grpc.insecure_channel(server.target) as channel:
        answer: pb.IngestHistoryResponse = pb_grpc.PredserveStub(channel).IngestHistory(iter(messages), timeout=10)
        return answer


def refused(server: ServerProcess, *messages: pb.IngestHistoryRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(server, *messages)
    return error.value.code(), error.value.details() or ""


def where(server: ServerProcess, dataset: str, ingest_id: str) -> tuple[int, int]:
    """The answer to a stream without rows: where the ingest resumes."""
    answer = call(server, pb.IngestHistoryRequest(dataset=dataset, ingest_id=ingest_id))
    return answer.next_batch, answer.next_row


def recorded(db: Path, ingest_id: str) -> list[tuple[int, int, int]]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT batch_number, first_row, row_count FROM ingest_batches WHERE ingest_id = ? ORDER BY batch_number",
            (ingest_id,),
        ).fetchall()


def rows_request(
    dataset: str, ingest_id: str, number: int, first_row: int, values: Sequence[float]
) -> pb.IngestHistoryRequest:
    """A batch as Row messages: one feature each (the value), and the targets columns_request gives its rows."""
    rows = [pb.Row(features=[value], target=pb.Target(integer=i % 2)) for i, value in enumerate(values)]
    return pb.IngestHistoryRequest(
        dataset=dataset, ingest_id=ingest_id, batch_number=number, first_row=first_row, rows=rows
    )


def test_a_batch_that_skips_rows_is_refused_naming_the_expected_first_row(server: ServerProcess) -> None:
    call(server, columns_request("jump", "jump-1", 0, 0, 9))
    code, details = refused(server, columns_request("jump", "jump-1", 1, 99, 3))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert details == (
        "batch 1 of ingest 'jump-1' is out of turn: expected batch 1 with first_row 9 (the rows the ingest has "
        "stored), got batch 1 with first_row 99: resume at batch 1, row 9, or use another ingest id"
    )
    assert where(server, "jump", "jump-1") == (1, 9)
    assert stored_numbers(Path(server.db), "jump") == [float(i) for i in range(9)]


def test_a_batch_number_after_a_gap_is_refused(server: ServerProcess) -> None:
    call(server, columns_request("gap", "gap-1", 0, 0, 5))
    code, details = refused(server, columns_request("gap", "gap-1", 2, 5, 5))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "expected batch 1 with first_row 5 (the rows the ingest has stored), got batch 2 with first_row 5" in details
    assert recorded(Path(server.db), "gap-1") == [(0, 0, 5)]
    assert call(server, columns_request("gap", "gap-1", 1, 5, 5)).next_batch == 2  # the expected one goes in


@pytest.mark.parametrize("number", [INT64_MAX, 2**62])
def test_a_batch_number_beyond_the_bound_is_refused_before_anything_is_stored(
    server: ServerProcess, number: int
) -> None:
    ingest_id = f"huge-{number}"
    code, details = refused(server, columns_request("huge", ingest_id, number, 0, 2))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        f"batch_number {number} is out of range: an ingest's batches are numbered 0, 1, 2, ... below 2**62"
    )
    assert recorded(Path(server.db), ingest_id) == []
    assert where(server, "huge", ingest_id) == (0, 0)


def test_a_first_row_near_the_int64_limit_is_refused_and_the_ingest_still_answers(server: ServerProcess) -> None:
    call(server, columns_request("edge", "edge-1", 0, 0, 3))
    code, details = refused(server, rows_request("edge", "edge-1", 1, INT64_MAX - 1, [7.0, 8.0]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        f"first_row {INT64_MAX - 1} is out of range: an ingest's rows are counted from 0, and a batch's rows "
        "(here 2) end at row 2**62 at most"
    )
    assert recorded(Path(server.db), "edge-1") == [(0, 0, 3)]
    assert stored_numbers(Path(server.db), "edge") == [0.0, 1.0, 2.0]
    assert where(server, "edge", "edge-1") == (1, 3)
    assert call(server, columns_request("edge", "edge-1", 1, 3, 2)).next_row == 5


def test_a_batch_sent_again_with_other_rows_is_refused_and_the_stored_ones_stay(server: ServerProcess) -> None:
    call(server, rows_request("other", "other-1", 0, 0, [0.0, 1.0, 2.0]))
    code, details = refused(server, rows_request("other", "other-1", 0, 0, [10.0, 11.0, 12.0]))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("batch 0 of ingest 'other-1' was stored with other rows: its 3 rows from row 0 have ")
    assert details.endswith(": resume at batch 1, row 3, or use another ingest id")
    assert stored_numbers(Path(server.db), "other") == [0.0, 1.0, 2.0]
    assert where(server, "other", "other-1") == (1, 3)


def test_a_batch_sent_again_with_the_same_rows_is_already_stored(server: ServerProcess) -> None:
    """Also when it comes in the other wire form: the same values are the same batch."""
    first = call(server, columns_request("same", "same-1", 0, 0, 4))
    again = call(server, columns_request("same", "same-1", 0, 0, 4))
    as_rows = call(server, rows_request("same", "same-1", 0, 0, [0.0, 1.0, 2.0, 3.0]))
    assert (first.rows_added, first.already_stored) == (4, False)
    assert (again.rows_added, again.already_stored, again.next_batch, again.next_row) == (0, True, 1, 4)
    assert (as_rows.rows_added, as_rows.already_stored, as_rows.next_batch, as_rows.next_row) == (0, True, 1, 4)
    assert stored_numbers(Path(server.db), "same") == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("two\nlines", r"'two\nlines'"),
        ("\x1b[31mred", r"'\x1b[31mred'"),
        ("tab\there", r"'tab\there'"),
        ("bidi\u202eoverride", r"'bidi\u202eoverride'"),
    ],
)
def test_a_feature_name_with_a_control_character_is_refused_escaped(
    server: ServerProcess, name: str, shown: str
) -> None:
    request = rows_request("names", "", 0, 0, [1.0])
    request.feature_names.append(name)
    code, details = refused(server, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"feature name 0 {shown} holds the control or non-printable character ")
    assert details.endswith(": feature names are at most 200 characters of printable text")
    assert "\n" not in details and "\x1b" not in details
    assert stored_numbers(Path(server.db), "names") == []


def test_an_over_long_feature_name_is_refused(server: ServerProcess) -> None:
    request = rows_request("long_names", "", 0, 0, [1.0, 2.0])
    request.feature_names.append("x" * 201)
    code, details = refused(server, request)
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"feature name 0 {'x' * 40!r}... (201 characters) is too long: feature names are at most 200 characters "
        "of printable text",
    )
    request.feature_names[0] = "é" * 200  # printable, non-ASCII, at the bound
    assert call(server, request).rows_added == 2


def test_the_cli_shows_a_csv_column_name_escaped(server: ServerProcess, tmp_path: Path) -> None:
    csv_path = tmp_path / "escape.csv"
    csv_path.write_text("ok,\x1b]0;pwned\x07,label\n1.0,2.0,0\n3.0,4.0,1\n")
    result = cli(server, "ingest", "--dataset", "escaped", "--csv", str(csv_path), "--target-column", "label")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        r"predserve: INVALID_ARGUMENT: feature name 1 '\x1b]0;pwned\x07' holds the control or non-printable "
        r"character '\x1b': feature names are at most 200 characters of printable text"
    )
    assert "\x1b" not in result.stderr


def test_an_imported_pipeline_whose_feature_names_hold_an_escape_code_is_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Names come in with an artifact too (feature_names_in_, the columns it was fitted on): the same rule."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [2.0, 0.0]], [0, 1, 0, 1])
    model.feature_names_in_ = np.asarray(["ok", "\x1b[2Jcleared"], dtype=object)
    artifact = tmp_path / "escaped.joblib"
    joblib.dump(model, artifact)
    with server.client() as client, pytest.raises(PredserveClientError) as error:
        client.import_model("escaped_names", artifact.read_bytes())
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details == (
        r"the artifact's feature name 1 '\x1b[2Jcleared' holds the control or non-printable character '\x1b': "
        "feature names are at most 200 characters of printable text"
    )
