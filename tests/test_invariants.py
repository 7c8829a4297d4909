"""The fault tests' invariant checker really catches each broken invariant it claims to check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from predserve.protos import predserve_pb2 as pb
from tests.faults.baseline import FOREST, Baseline
from tests.invariants import InvariantViolation, check_invariants
from tests.support import ServerProcess


def execute(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def artifact_of(workdir: Path, set_id: int) -> Path:
    conn = sqlite3.connect(workdir / "predictions.db")
    try:
        (path,) = conn.execute("SELECT model_artifact_path FROM prediction_sets WHERE id = ?", (set_id,)).fetchone()
    finally:
        conn.close()
    return workdir / "models" / path


def check(workdir: Path, **kwargs: object) -> None:
    check_invariants(workdir / "predictions.db", workdir / "models", **kwargs)  # type: ignore[arg-type]


def test_an_intact_baseline_passes(baseline: Baseline) -> None:
    snapshot = check_invariants(
        baseline.workdir / "predictions.db", baseline.workdir / "models", acknowledged=baseline.trained
    )
    assert {t: r.id for t, r in snapshot.current.items()} == {"iris_classifier": 2, FOREST: 3}


def test_catches_a_changed_artifact(baseline: Baseline, tmp_path: Path) -> None:
    workdir = baseline.copy(tmp_path)
    artifact = artifact_of(workdir, 1)
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"!")
    with pytest.raises(InvariantViolation, match="set 1: artifact SHA-256 differs"):
        check(workdir)
    check(workdir, broken_sets={1})


def test_catches_a_missing_artifact_and_a_temp_file(baseline: Baseline, tmp_path: Path) -> None:
    workdir = baseline.copy(tmp_path)
    artifact_of(workdir, 2).unlink()
    (workdir / "models" / ".tmp-leftover.joblib").write_bytes(b"x")
    with pytest.raises(InvariantViolation, match=r"(?s)artifact .* is missing.*temporary file left behind"):
        check(workdir)


def test_catches_two_current_rows(baseline: Baseline, tmp_path: Path) -> None:
    workdir = baseline.copy(tmp_path)
    execute(
        workdir / "predictions.db",
        "DROP INDEX ux_prediction_sets_one_current",
        "UPDATE prediction_sets SET is_current = 1 WHERE id = 1",
    )
    with pytest.raises(InvariantViolation, match=f"model type {FOREST} has 2 current rows"):
        check(workdir)


def test_catches_a_lost_or_superseded_acknowledged_train(baseline: Baseline, tmp_path: Path) -> None:
    workdir = baseline.copy(tmp_path)
    lost = pb.TrainResponse(prediction_set_id=9, model_type=FOREST)
    with pytest.raises(InvariantViolation, match="acknowledged Train of set 9 is not in the database"):
        check(workdir, acknowledged=[lost])
    execute(
        workdir / "predictions.db",
        "UPDATE prediction_sets SET is_current = 0 WHERE id = 3",
        "UPDATE prediction_sets SET is_current = 1 WHERE id = 1",
    )
    with pytest.raises(InvariantViolation, match="acknowledged set 3 was superseded by older set 1"):
        check(workdir, acknowledged=baseline.trained)


def test_catches_a_server_serving_another_set_than_the_database(baseline: Baseline, tmp_path: Path) -> None:
    workdir = baseline.copy(tmp_path)
    server = ServerProcess(workdir).start()
    try:
        check(workdir, server=server)
        execute(
            server.db,
            "UPDATE prediction_sets SET is_current = 0 WHERE id = 3",
            "UPDATE prediction_sets SET is_current = 1 WHERE id = 1",
        )
        with pytest.raises(InvariantViolation, match=f"{FOREST}: Predict answered from set 3, not 1"):
            check(workdir, server=server)
        with pytest.raises(InvariantViolation, match=f"{FOREST}: expected a fallback to set 1"):
            check(workdir, server=server, fallbacks={FOREST: 1}, broken_sets={3})
    finally:
        server.kill()
