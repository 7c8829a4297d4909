"""kill -9 at each named crash point of a Train and of a migration, then a clean restart.

The server is started with PREDSERVE_FAILPOINT for the crashing run only; reaching the point sends it
SIGKILL. The next start, without the failpoint, must find the invariant intact: the previous current
set still current (or, after the commit, the new one), no temporary file, orphans ignored and logged.
"""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

import pytest

from predserve.client.library import PredserveClientError
from predserve.server.failpoints import ENV_VAR, MID_MIGRATION
from predserve.server.settings import MIGRATIONS_DIR
from predserve.server.storage.migrations import MigrationRunner, migrations_for
from predserve.server.storage.sqlite import SqliteDatabase
from tests.faults.baseline import CLASSIFIER, FOREST, SMALL_FOREST, Baseline, Launch
from tests.invariants import TEMP_PREFIX, check_invariants, read_rows
from tests.support import EVERY_MIGRATION, ServerProcess
from tests.test_migrations import columns, phase4_database

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # about 3 s a test: a baseline copy, a kill, a restart

# What a client sees when the server dies under its call; the text comes from gRPC, not from predserve.
CONNECTION_LOST = re.compile(r"Socket closed|Connection reset|Broken pipe|failed to connect|Stream removed", re.I)


def crash_a_train(server: ServerProcess, failpoint: str) -> None:
    """Starts the server with the failpoint, sends one Train and proves the process died of SIGKILL there."""
    server.env = {ENV_VAR: failpoint}
    server.start()
    with server.client() as client, pytest.raises(PredserveClientError) as caught:
        client.train(FOREST, dataset="iris", algorithm="random_forest", params=SMALL_FOREST, random_seed=11)
    assert caught.value.code.name == "UNAVAILABLE", caught.value
    assert CONNECTION_LOST.search(caught.value.details), caught.value.details
    assert server.wait_exit(timeout=30) == -signal.SIGKILL
    server.kill()  # closes the log
    server.env = {}


def models_on_disk(server: ServerProcess) -> set[str]:
    return {p.name for p in server.models_dir.iterdir()}


def test_kill_during_fit(launch: Launch, baseline: Baseline, tmp_path: Path) -> None:
    """SIGKILL while the pipeline is being fitted: nothing written, previous set stays current."""
    server = launch(baseline.copy(tmp_path))
    before = models_on_disk(server)
    crash_a_train(server, "during_fit")
    assert models_on_disk(server) == before

    server.start()
    snapshot = check_invariants(server.db, server.models_dir, acknowledged=baseline.trained, server=server)
    assert snapshot.current[FOREST].id == baseline.set_id(FOREST)
    assert len(snapshot.rows) == 3 and not snapshot.orphans
    server.kill()


def test_kill_after_temp_write(launch: Launch, baseline: Baseline, tmp_path: Path) -> None:
    """SIGKILL after the temporary file is written and fsynced, before the rename: it is removed at start-up."""
    server = launch(baseline.copy(tmp_path))
    before = models_on_disk(server)
    crash_a_train(server, "after_temp_write")
    leftovers = models_on_disk(server) - before
    assert len(leftovers) == 1 and next(iter(leftovers)).startswith(TEMP_PREFIX)  # the crash really was there

    server.start()
    snapshot = check_invariants(server.db, server.models_dir, acknowledged=baseline.trained, server=server)
    assert models_on_disk(server) == before
    assert snapshot.current[FOREST].id == baseline.set_id(FOREST) and len(snapshot.rows) == 3
    assert f"removing temporary artifact left by an interrupted write: {next(iter(leftovers))}" in server.log()
    server.kill()


def test_kill_after_rename(launch: Launch, baseline: Baseline, tmp_path: Path) -> None:
    """SIGKILL after the artifact is renamed into place, before its row: an orphan, ignored and logged."""
    server = launch(baseline.copy(tmp_path))
    before = models_on_disk(server)
    crash_a_train(server, "after_rename")
    orphans = models_on_disk(server) - before
    assert len(orphans) == 1 and not next(iter(orphans)).startswith(TEMP_PREFIX)

    server.start()
    snapshot = check_invariants(server.db, server.models_dir, acknowledged=baseline.trained, server=server)
    assert snapshot.orphans == orphans
    assert snapshot.current[FOREST].id == baseline.set_id(FOREST) and len(snapshot.rows) == 3
    assert f"ignoring 1 artifact(s) that no prediction set records: {sorted(orphans)}" in server.log()
    server.kill()


def test_kill_after_commit(launch: Launch, baseline: Baseline, tmp_path: Path) -> None:
    """SIGKILL after the row is committed, before the answer: the new set is current and served at restart."""
    server = launch(baseline.copy(tmp_path))
    before = models_on_disk(server)
    crash_a_train(server, "after_commit")
    written = models_on_disk(server) - before
    artifacts = {name for name in written if name.endswith(".joblib")}
    assert len(artifacts) == 1 and len(written) == 2  # the artifact and its compiled form (server/runtimes/)

    server.start()
    snapshot = check_invariants(server.db, server.models_dir, acknowledged=baseline.trained, server=server)
    new = snapshot.current[FOREST]
    assert new.id == 4 and new.artifact_path == next(iter(artifacts))  # verified by the checker, served by Predict
    assert snapshot.current[CLASSIFIER].id == baseline.set_id(CLASSIFIER) and not snapshot.orphans
    assert f"loaded model type={FOREST} set=4 path={new.artifact_path}" in server.log()
    server.kill()


def test_kill_mid_migration_of_a_phase4_database(launch: Launch, tmp_path: Path) -> None:
    """SIGKILL between two statements of migration 0002 on a Phase-4 database: the next start upgrades it."""
    db = tmp_path / "phase4.db"
    phase4_database(db)
    # 0001 is a no-op on a Phase-4 database; applying it first makes the kill land inside 0002.
    MigrationRunner(SqliteDatabase(db)).apply(migrations_for(SqliteDatabase(db), MIGRATIONS_DIR)[:1])
    rows_before = dump_rows(db)

    server = launch(tmp_path, db=db, env={ENV_VAR: MID_MIGRATION})
    server.start(wait=False)
    assert server.wait_exit(timeout=60) == -signal.SIGKILL
    server.kill()
    assert "applied migration 0002" not in server.log()
    # The first ALTER TABLE ran inside the transaction the kill cut short: none of it is visible.
    assert "model_artifact_path" not in columns(db, "prediction_sets")
    assert applied_versions(db) == [1]
    assert dump_rows(db) == rows_before

    server.env = {}
    server.start()
    assert applied_versions(db) == EVERY_MIGRATION
    assert "model_artifact_path" in columns(db, "prediction_sets")
    snapshot = check_invariants(db, server.models_dir, server=server)
    assert dump_rows(db) == rows_before
    kept = {row.id: (row.model_type, row.is_current) for row in read_rows(db).values()}
    # Every row kept; of Phase 4's two current "price" rows only the newest stays current.
    assert kept == {1: ("churn", False), 2: ("churn", True), 3: ("price", False), 4: ("price", True)}
    assert sorted(snapshot.current) == ["churn", "price"]
    server.kill()


def applied_versions(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        conn.close()


def dump_rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every Phase-4 column of every row (is_current aside: the upgrade may unmark a duplicate)."""
    conn = sqlite3.connect(db)
    try:
        return {
            "data_history": conn.execute("SELECT * FROM data_history ORDER BY id").fetchall(),
            "prediction_sets": conn.execute(
                "SELECT id, model_type, dataset, created_at, metrics FROM prediction_sets ORDER BY id"
            ).fetchall(),
        }
    finally:
        conn.close()
