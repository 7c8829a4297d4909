"""A damaged or lost registry is named at start-up, and damage met at run time answers DATA_LOSS."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from predserve.client.library import DataLossError
from tests.faults.baseline import CLASSIFIER, Baseline, Launch
from tests.support import IRIS_PROBES, iris_rows

pytestmark = [pytest.mark.faults]


def page_size_and_count(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA page_size").fetchone()[0], conn.execute("PRAGMA page_count").fetchone()[0]
    finally:
        conn.close()


def grown_baseline(baseline: Baseline, tmp_path: Path, launch: Launch) -> Path:
    """A copy of the baseline with enough history rows that page 20 holds data, checkpointed into the file."""
    workdir = baseline.copy(tmp_path)
    server = launch(workdir).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("more", rows * 10, names)
    assert server.stop() == 0
    db = workdir / "predictions.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert page_size_and_count(db)[1] > 20
    return workdir


def overwrite_page(db: Path, page: int) -> None:
    """What `dd if=/dev/urandom of=db bs=PAGE seek=page-1 count=1 conv=notrunc` does."""
    size, _ = page_size_and_count(db)
    with open(db, "r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(os.urandom(size))


@pytest.mark.parametrize("page", [2, 20])
def test_a_corrupted_page_stops_start_up_with_one_line(
    baseline: Baseline, tmp_path: Path, launch: Launch, page: int
) -> None:
    """Random bytes over one page of the SQLite file: start-up refuses it, naming the file."""
    workdir = grown_baseline(baseline, tmp_path, launch)
    db = workdir / "predictions.db"
    overwrite_page(db, page)
    before = db.read_bytes()

    server = launch(workdir)
    server.start(wait=False)
    assert server.wait_exit(timeout=60) == 1
    errors = [line for line in server.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1, server.log()
    assert f"predserve cannot start: database {db} is corrupted" in errors[0]
    assert "restore it from a backup" in errors[0]
    assert "Traceback" not in server.log()
    assert db.read_bytes() == before  # nothing was migrated or rewritten


def test_corruption_met_at_run_time_answers_data_loss(baseline: Baseline, tmp_path: Path, launch: Launch) -> None:
    """A page of data_history damaged while the start-up check is off: IngestHistory answers DATA_LOSS."""
    workdir = grown_baseline(baseline, tmp_path, launch)
    db = workdir / "predictions.db"
    overwrite_page(db, 20)
    server = launch(workdir, extra_args=["--no-integrity-check"]).start()
    names, rows = iris_rows()
    with server.client() as client:
        with pytest.raises(DataLossError) as failure:
            client.ingest("more", rows, names)  # may land on undamaged pages
            client.train("after", dataset="more", algorithm="logistic_regression")  # reads them all
        assert f"database {db} is corrupted" in failure.value.details
        # What is in memory keeps serving.
        assert len(client.predict(CLASSIFIER, IRIS_PROBES).predictions) == len(IRIS_PROBES)
    assert "Traceback" not in server.log()


def test_an_empty_registry_beside_artifacts_is_refused(baseline: Baseline, tmp_path: Path, launch: Launch) -> None:
    """The database file deleted (or emptied to 0 bytes) beside 3 artifacts: start-up refuses to bury them."""
    workdir = baseline.copy(tmp_path)
    db = workdir / "predictions.db"
    for leftover in workdir.glob("predictions.db*"):
        leftover.unlink()
    db.write_bytes(b"")

    server = launch(workdir)
    server.start(wait=False)
    assert server.wait_exit(timeout=60) == 1
    assert "records no prediction set, but" in server.log() and "holds 3 artifact(s)" in server.log()
    assert "--allow-empty-registry" in server.log()

    server.extra_args = ["--allow-empty-registry"]
    server.start()
    with server.client() as client:
        assert [m.model_type for m in client.list_models().models] == []
    assert len(list((workdir / "models").glob("*.joblib"))) == 3
