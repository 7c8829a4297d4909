"""The services that must not read the whole history, run in process on a real SQLite registry of SETS sets:
start-up's orphan check and fallback, recover's orphan check, and the clean-up after a failed Train.

Every statement each one runs is traced on the very connections the registry opens, with the number of SQLite
virtual-machine steps it took. No statement on prediction_sets may scan the table (EXPLAIN QUERY PLAN), and
none may take as many steps as there are sets, as one that visits each set would even through an index. They
still answer as before: the orphan is named, the fallback serves the newest older set that verifies.
(Start-up's PRAGMA quick_check, --integrity-check, reads every page on purpose; it is no query of
the sets.) tests/test_query_plans.py states the plan of each of these statements on both databases."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from predserve.server.app import Services, build_services
from predserve.server.domain import HistoryRow
from predserve.server.errors import StorageError
from predserve.server.model_store import LoadedModel
from predserve.server.services.training import TrainCommand
from predserve.server.settings import ServerConfig
from predserve.server.storage.sqlite import SqliteDatabase
from tests.support import iris_rows

SETS = 2000
MODEL_TYPE = "iris_classifier"
ORPHAN = f"{MODEL_TYPE}-orphan.joblib"


@dataclasses.dataclass
class Statement:
    sql: str  # as SQLite expanded it, with its parameters
    steps: int = 0


Trace = list[Statement]


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch) -> Trace:
    """Every statement run on a connection the SQLite registry opens from now on, with its steps."""
    statements: Trace = []
    connect = SqliteDatabase._connect

    def traced(database: SqliteDatabase) -> sqlite3.Connection:
        conn = connect(database)
        running: list[Statement] = []  # this connection's statement, which the steps that follow belong to

        def started(sql: str) -> None:
            running[:] = [Statement(sql)]
            statements.append(running[0])

        def stepped() -> int:
            if running:
                running[0].steps += 1
            return 0  # go on

        conn.set_trace_callback(started)
        conn.set_progress_handler(stepped, 1)
        return conn

    monkeypatch.setattr(SqliteDatabase, "_connect", traced)
    return statements


def unbounded(db_path: Path, statements: Trace) -> list[tuple[str, int, list[str]]]:
    """The statements on prediction_sets that scan it (bar the one-entry-per-type index of current sets) or
    take a step per set, with their steps and plans."""
    found = []
    with closing(sqlite3.connect(db_path)) as conn:
        for statement in statements:
            if "prediction_sets" not in statement.sql:
                continue
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement.sql}").fetchall()]
            scans = [
                line
                for line in plan
                if line.startswith("SCAN prediction_sets") and "ux_prediction_sets_one_current" not in line
            ]
            if scans or statement.steps >= SETS:
                found.append((statement.sql, statement.steps, plan))
    return found


def config_in(root: Path) -> ServerConfig:
    return ServerConfig(db_path=root / "registry.db", models_dir=root / "models")


def train(services: Services) -> int:
    names, rows = iris_rows()
    command = TrainCommand(
        model_type=MODEL_TYPE,
        algorithm="logistic_regression",
        rows=[HistoryRow(tuple(features), target) for features, target in rows],
        feature_names=names,
    )
    return services.training.train(command).model.record.id


def long_registry(root: Path, trained: int) -> tuple[ServerConfig, list[int]]:
    """SETS sets of one model type: the oldest archived by retention (their files gone), then `trained` real
    Trains, the last one current. Returns the ids of the trained sets, oldest first."""
    config = config_in(root)
    services = build_services(config)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    archived = []
    for i in range(SETS - trained):
        created = services.database.timestamp_parameter(start + dt.timedelta(minutes=i))
        archived.append((MODEL_TYPE, "iris", created, created, f"{MODEL_TYPE}-{i}.joblib"))
    with services.database.writing() as conn:
        conn.executemany(
            "INSERT INTO prediction_sets (model_type, dataset, created_at, archived_at, model_artifact_path) "
            "VALUES (?, ?, ?, ?, ?)",
            archived,
        )
    ids = [train(services) for _ in range(trained)]
    services.database.close()
    assert ids[-1] == SETS
    return config, ids


def corrupt(config: ServerConfig, set_ids: list[int]) -> None:
    """Flips a byte of each set's artifact: its SHA-256 no longer matches, so loading refuses it."""
    with closing(sqlite3.connect(config.db_path)) as conn:
        for set_id in set_ids:
            (name,) = conn.execute("SELECT model_artifact_path FROM prediction_sets WHERE id = ?", (set_id,)).fetchone()
            path = config.models_dir / name
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))


def test_start_up_names_the_orphan_and_falls_back_without_reading_the_history(
    tmp_path: Path, trace: Trace, caplog: pytest.LogCaptureFixture
) -> None:
    config, (previous, current) = long_registry(tmp_path, trained=2)
    (config.models_dir / ORPHAN).write_bytes(b"left by a Train that died before its commit")
    corrupt(config, [current])
    caplog.set_level(logging.INFO)
    trace.clear()
    services = build_services(config)

    model = services.store.slots()[MODEL_TYPE]
    assert isinstance(model, LoadedModel)
    assert (model.record.id, model.fallback_for) == (previous, current)
    assert f"ignoring 1 artifact(s) that no prediction set records: {[ORPHAN]}" in caplog.messages
    assert f"FALLBACK: current set {current} refused (" in caplog.text
    assert f"serving older set {previous}" in caplog.text
    assert any("prediction_sets" in statement.sql for statement in trace)
    assert unbounded(config.db_path, trace) == []


def test_the_fallback_reads_on_past_refused_older_sets_a_few_at_a_time(
    tmp_path: Path, trace: Trace, caplog: pytest.LogCaptureFixture
) -> None:
    """More refused older sets than one query fetches: the fallback goes on to the newest one that verifies."""
    config, ids = long_registry(tmp_path, trained=8)
    serves, refused = ids[0], ids[1:]
    corrupt(config, refused)
    trace.clear()
    services = build_services(config)

    model = services.store.slots()[MODEL_TYPE]
    assert isinstance(model, LoadedModel)
    assert (model.record.id, model.fallback_for) == (serves, ids[-1])
    for older in refused[:-1]:
        assert f"older set {older} of model type {MODEL_TYPE} refused too" in caplog.text
    assert unbounded(config.db_path, trace) == []


def test_recover_finds_the_orphan_without_reading_the_history(tmp_path: Path, trace: Trace) -> None:
    config, _ = long_registry(tmp_path, trained=1)
    (config.models_dir / ORPHAN).write_bytes(b"left by a Train that died before its commit")
    services = build_services(config)
    trace.clear()

    assert services.recovery.orphans() == [ORPHAN]
    assert [statement.sql for statement in trace if "prediction_sets" in statement.sql]  # it asked the registry
    assert unbounded(config.db_path, trace) == []


def test_a_failed_train_removes_its_file_without_reading_the_history(tmp_path: Path, trace: Trace) -> None:
    """The insert fails inside SQLite, so only the database can say whether the set was recorded: the registrar
    asks about its one file, finds it unrecorded and deletes it."""
    config, (current,) = long_registry(tmp_path, trained=1)
    services = build_services(config)
    before = sorted(p.name for p in config.models_dir.iterdir())
    with services.database.writing() as conn:
        conn.execute(
            "CREATE TRIGGER refuse_new_sets BEFORE INSERT ON prediction_sets "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    trace.clear()

    with pytest.raises(StorageError, match="injected failure"):
        train(services)
    assert sorted(p.name for p in config.models_dir.iterdir()) == before
    current_set = services.sets.current(MODEL_TYPE)
    assert current_set is not None and current_set.id == current
    assert any("WHERE model_artifact_path = " in statement.sql for statement in trace)
    assert unbounded(config.db_path, trace) == []


def every_set_of_the_type(services: Services) -> object:
    """How the fallback found its candidates before."""
    return services.sets.for_model_type(MODEL_TYPE)


def every_recorded_path(services: Services) -> object:
    """How the orphan checks knew the recorded files before."""
    with services.database.reading() as conn:
        return conn.execute(
            "SELECT model_artifact_path FROM prediction_sets WHERE model_artifact_path IS NOT NULL"
        ).fetchall()


@pytest.mark.parametrize("read_everything", [every_set_of_the_type, every_recorded_path])
def test_the_trace_catches_a_statement_that_reads_every_set(
    tmp_path: Path, trace: Trace, read_everything: Callable[[Services], object]
) -> None:
    """What the fallback and the orphan checks ran before: were they back, the tests above would fail."""
    config, _ = long_registry(tmp_path, trained=1)
    services = build_services(config)
    trace.clear()
    read_everything(services)
    assert len(unbounded(config.db_path, trace)) == 1
