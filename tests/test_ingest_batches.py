"""Large files ingest with default limits (issue 17, item 2): real servers, the real CLI.

A file goes as consecutive batches of one ingest, each stored all or nothing and recorded under
(ingest id, batch number); a batch sent again adds nothing, and an ingest killed with SIGKILL resumes by
running the same command again, ending with exactly the file's rows.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from harness.waiting import wait_until
from predserve.client import AsyncPredserveClient, IngestProgress
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.support import PROJECT_ROOT, ServerProcess
from tests.test_cli import cli, cli_json


def write_csv(path: Path, rows: int, features: int = 10) -> Path:
    """f0 is the row's number, so that stored rows can be matched to the file's one by one."""
    lines = [",".join([f"f{i}" for i in range(features)] + ["label"])]
    lines += [",".join([f"{i}.0"] + [f"{(i * 7 + j) % 13 / 13}" for j in range(1, features)] + [str(i % 2)])
              for i in range(rows)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def stored_numbers(db: Path, dataset: str) -> list[float]:
    """Each stored row's f0, in the order the rows were appended."""
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT json_extract(features, '$[0]') FROM data_history WHERE dataset = ? ORDER BY id", (dataset,)
            )
        ]


def stored_batches(db: Path) -> list[tuple[int, int, int]]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT batch_number, first_row, row_count FROM ingest_batches ORDER BY batch_number"
        ).fetchall()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("ingest-batches")).start()
    yield process
    process.kill()


def columns_request(dataset: str, ingest_id: str, number: int, first_row: int, rows: int) -> pb.IngestHistoryRequest:
    """A batch as the client library sends it: one feature (the row's number) and integer targets, as columns."""
    return pb.IngestHistoryRequest(
        dataset=dataset,
        ingest_id=ingest_id,
        batch_number=number,
        first_row=first_row,
        columns=pb.ColumnBatch(
            feature_count=1,
            features=struct.pack(f"<{rows}d", *range(first_row, first_row + rows)),
            integer_targets=struct.pack(f"<{rows}q", *(i % 2 for i in range(rows))),
        ),
    )


def test_a_batch_sent_again_adds_nothing(shared: ServerProcess) -> None:
    with grpc.insecure_channel(shared.target) as channel:
        ingest = pb_grpc.PredserveStub(channel).IngestHistory
        first = ingest(iter([columns_request("resent", "once", 0, 0, 5)]), timeout=10)
        again = ingest(iter([columns_request("resent", "once", 0, 0, 5)]), timeout=10)
        probe = ingest(iter([pb.IngestHistoryRequest(dataset="resent", ingest_id="once")]), timeout=10)
        with pytest.raises(grpc.RpcError) as moved:
            ingest(iter([columns_request("resent", "once", 0, 2, 3)]), timeout=10)
        # The form of earlier clients, a Row message per row and no ingest id: stored, unrecorded, as before.
        row = pb.Row(features=[9.0], target=pb.Target(integer=1))
        old = ingest(iter([pb.IngestHistoryRequest(dataset="resent", rows=[row, row])]), timeout=10)
    assert (first.rows_added, first.total_rows, first.already_stored) == (5, 5, False)
    assert (again.rows_added, again.total_rows, again.already_stored) == (0, 5, True)
    assert (again.ingest_id, again.batch_number, again.next_batch, again.next_row) == ("once", 0, 1, 5)
    assert (probe.rows_added, probe.total_rows, probe.next_batch, probe.next_row) == (0, 5, 1, 5)
    assert moved.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "resume at batch 1, row 5" in (moved.value.details() or "")
    assert (old.rows_added, old.total_rows, old.ingest_id) == (2, 7, "")
    assert stored_numbers(Path(shared.db), "resent") == [0.0, 1.0, 2.0, 3.0, 4.0, 9.0, 9.0]


def test_the_library_resumes_an_ingest_by_its_id(shared: ServerProcess) -> None:
    rows = [([float(i), 1.0], i % 3) for i in range(10)]
    seen: list[int] = []

    def note(progress: IngestProgress) -> None:
        seen.append(progress.rows_stored)

    with shared.client() as client:
        first = client.ingest("lib", rows[:6], ["a", "b"], batch_size=4, ingest_id="lib-1")
        # The same call with every row: the stored batches are passed over, the rest follow them.
        rest = client.ingest("lib", rows, ["a", "b"], 4, ingest_id="lib-1", progress=note)
        done = client.ingest("lib", rows, ["a", "b"], batch_size=4, ingest_id="lib-1")
        anonymous = client.ingest("lib", rows[:3], batch_size=2)
    assert (first.rows_added, first.total_rows, first.next_batch) == (6, 6, 2)
    assert (rest.rows_added, rest.total_rows, rest.next_batch, rest.next_row) == (4, 10, 3, 10)
    assert seen == [6, 10]  # after the first small call, then after each batch
    assert (done.rows_added, done.already_stored, done.total_rows) == (0, True, 10)
    assert anonymous.rows_added == 3 and anonymous.ingest_id.startswith("py-")
    assert stored_numbers(Path(shared.db), "lib") == [float(i) for i in range(10)] + [0.0, 1.0, 2.0]


def test_the_async_client_ingests_a_csv_file_in_batches(shared: ServerProcess, tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "async.csv", 25, features=3)

    async def scenario() -> tuple[pb.IngestHistoryResponse, pb.IngestHistoryResponse]:
        async with AsyncPredserveClient(shared.target) as client:
            first = await client.ingest_csv("async_csv", csv_path, "label", batch_size=10)
            return first, await client.ingest_csv("async_csv", csv_path, "label", batch_size=10)

    first, again = asyncio.run(scenario())
    assert (first.rows_added, first.total_rows, first.next_batch) == (25, 25, 3)
    assert (again.rows_added, again.already_stored) == (0, True)
    assert stored_numbers(Path(shared.db), "async_csv") == [float(i) for i in range(25)]


def test_the_per_batch_limit_says_how_to_proceed_and_smaller_batches_do(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=["--max-rows-per-request", "50"]).start()
    try:
        csv_path = write_csv(tmp_path / "over.csv", 120, features=2)
        command = ("ingest", "--dataset", "over", "--csv", str(csv_path), "--target-column", "label")
        refused = cli(server, *command)
        ingested = cli_json(server, *command, "--batch-rows", "50")
    finally:
        server.kill()
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "predserve: RESOURCE_EXHAUSTED: this IngestHistory batch has 120 rows so far, more than the limit of 50 rows "
        "per batch (--max-rows-per-request): send at most 50 rows per IngestHistory stream, as consecutive batches; "
        "the predserve CLI and client library batch for you"
    )
    assert (ingested["rows_added"], ingested["total_rows"], ingested["next_batch"]) == (120, 120, 3)


@pytest.mark.slow
def test_a_200k_row_csv_ingests_and_trains_with_default_settings(server: ServerProcess, tmp_path: Path) -> None:
    """The issue's "Done when": the file refused at row 100,500 before now goes as two batches."""
    csv_path = write_csv(tmp_path / "big.csv", 200_000)
    result = cli(server, "--json", "ingest", "--dataset", "big", "--csv", str(csv_path), "--target-column", "label")
    assert result.returncode == 0, result.stderr
    ingested = json.loads(result.stdout)
    assert (ingested["rows_added"], ingested["total_rows"], ingested["next_batch"]) == (200_000, 200_000, 2)
    assert "200k/200k" in result.stderr and "rows/s" in result.stderr  # tqdm's bar: rows and throughput
    trained = cli_json(server, "train", "--model-type", "big", "--algorithm", "logistic_regression", "--dataset", "big")
    assert trained["training_rows"] == 200_000


@pytest.mark.slow
def test_an_ingest_killed_mid_file_resumes_when_run_again(
    tmp_path: Path, reap: Callable[[ServerProcess], ServerProcess]
) -> None:
    rows, batch_rows = 150_000, 15_000
    csv_path = write_csv(tmp_path / "killed.csv", rows)
    server = reap(ServerProcess(tmp_path).start())
    db = Path(server.db)

    def command() -> list[str]:
        return [sys.executable, "-m", "predserve.client", "--target", server.target, "--json", "ingest",
                "--dataset", "killed", "--csv", str(csv_path), "--target-column", "label",
                "--batch-rows", str(batch_rows)]  # fmt: skip

    ingest = subprocess.Popen(command(), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: ingest.poll() is None and len(stored_batches(db)) >= 3, 120, "3 stored batches", 0.01)
        server.kill()
        _, errors = ingest.communicate(timeout=60)
    finally:
        if ingest.poll() is None:
            ingest.kill()
    assert ingest.returncode == 1 and errors.strip().splitlines()[-1].startswith("predserve: UNAVAILABLE: ")
    at_kill = stored_batches(db)
    stored = len(stored_numbers(db, "killed"))
    assert 3 <= len(at_kill) < rows // batch_rows
    assert stored == sum(count for _, _, count in at_kill)  # whole batches only
    assert at_kill == [(n, n * batch_rows, batch_rows) for n in range(len(at_kill))]

    server.start()
    resumed = subprocess.run(command(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    answer = json.loads(resumed.stdout)
    assert (answer["rows_added"], answer["total_rows"], answer["next_row"]) == (rows - stored, rows, rows)
    assert stored_batches(db)[: len(at_kill)] == at_kill
    assert stored_numbers(db, "killed") == [float(i) for i in range(rows)]  # each row once, in the file's order
