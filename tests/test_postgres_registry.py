"""PostgreSQL as the registry, in process: the same migrations per dialect, the Phase-4 upgrade, the one-current
rule under concurrent writers on separate connections (as separate hosts would be), and busy locks as UNAVAILABLE."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from predserve.server.config import parse_config
from predserve.server.domain import ArtifactInfo, NewPredictionSet, SelfCheck
from predserve.server.errors import StorageError, Unavailable
from predserve.server.failpoints import ENV_VAR, MID_MIGRATION
from predserve.server.settings import MIGRATIONS_DIR, ServerConfig
from predserve.server.storage.databases import open_database
from predserve.server.storage.history import HistoryRepository
from predserve.server.storage.migrations import MigrationRunner, dialect_migrations, discover_migrations, migrations_for
from predserve.server.storage.postgres import PostgresDatabase, redact_url
from predserve.server.storage.repositories import PredictionSetRepository
from predserve.server.storage.sqlite import SqliteDatabase
from tests.support import EVERY_MIGRATION, ServerProcess
from tests.test_migrations import INGEST_BATCHES_COLUMNS, PREDICTION_SETS_COLUMNS

FIXTURES = Path(__file__).parent / "fixtures"
POSTGRES_MIGRATIONS = MIGRATIONS_DIR / PostgresDatabase.migrations_subdir


@pytest.fixture
def database(postgres_url: str) -> Iterator[PostgresDatabase]:
    database = PostgresDatabase(postgres_url, busy_timeout_seconds=0.5)
    yield database
    database.close()


def migrate(database: PostgresDatabase) -> list[int]:
    return [m.version for m in MigrationRunner(database).apply(migrations_for(database, MIGRATIONS_DIR))]


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode()).fetchall()


def schema(url: str) -> list[tuple]:
    return query(
        url,
        """SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') ORDER BY c.relname""",
    )


def columns(url: str, table: str) -> list[str]:
    rows = query(
        url,
        f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position",
    )
    return [row[0] for row in rows]


def new_set(model_type: str = "iris_classifier", path: str = "a.joblib") -> NewPredictionSet:
    return NewPredictionSet(
        model_type=model_type,
        dataset="iris",
        algorithm="logistic_regression",
        task="classification",
        params={"C": 1.0},
        metrics={"accuracy": 0.9},
        feature_names=("a", "b"),
        classes=(0, 1),
        training_rows=10,
        fit_seconds=0.01,
        artifact=ArtifactInfo(path, "0" * 64, 3),
        environment={"sklearn": "1.0"},
        self_check=SelfCheck([[1.0, 2.0]], [0]),
    )


def test_both_dialects_have_the_same_numbered_migrations() -> None:
    sqlite = [(m.version, m.name) for m in dialect_migrations(MIGRATIONS_DIR, SqliteDatabase.migrations_subdir)]
    postgres = [(m.version, m.name) for m in dialect_migrations(MIGRATIONS_DIR, PostgresDatabase.migrations_subdir)]
    assert postgres == sqlite
    assert [version for version, _ in sqlite] == EVERY_MIGRATION


def test_a_migration_is_written_once_or_once_for_each_dialect() -> None:
    """Shared where the dialects agree; where they differ, a file in each dialect's folder, never in one only."""
    sqlite = {p.name for p in (MIGRATIONS_DIR / SqliteDatabase.migrations_subdir).glob("*.sql")}
    postgres = {p.name for p in POSTGRES_MIGRATIONS.glob("*.sql")}
    assert sqlite == postgres
    shared = {p.read_text() for p in MIGRATIONS_DIR.glob("*.sql")}
    assert all(
        (MIGRATIONS_DIR / "sqlite" / name).read_text() != (POSTGRES_MIGRATIONS / name).read_text() for name in sqlite
    )
    assert shared and not {p.name for p in MIGRATIONS_DIR.glob("*.sql")} & sqlite


def test_a_number_both_shared_and_for_one_dialect_is_refused(tmp_path: Path) -> None:
    (tmp_path / "postgresql").mkdir()
    for folder in (tmp_path, tmp_path / "postgresql"):
        (folder / "0001_one.sql").write_text("SELECT 1;")
    with pytest.raises(StorageError, match=r"\[1\] are both shared and written for postgresql"):
        dialect_migrations(tmp_path, "postgresql")


def test_the_backend_is_chosen_by_the_database_url() -> None:
    url = "postgresql://predserve:s3cret@db.example:5433/registry"
    config = parse_config(["--db", url])
    assert config.database_url == url and config.db_path == ServerConfig().db_path
    assert "s3cret" not in repr(config)
    assert parse_config([], env={"PREDSERVE_DB": url}).database_url == url
    assert parse_config(["--db", "some/file.db"]).db_path == Path("some/file.db")
    assert isinstance(open_database(url), PostgresDatabase)
    assert isinstance(open_database(Path("x.db")), SqliteDatabase)
    assert redact_url(url) == "postgresql://predserve@db.example:5433/registry"


def test_blank_database_gets_the_exact_schema(database: PostgresDatabase, postgres_url: str) -> None:
    assert migrate(database) == EVERY_MIGRATION
    assert schema(postgres_url) == [
        ("data_history", "r"),
        ("data_history_pkey", "i"),
        ("data_segments", "r"),
        ("data_segments_pkey", "i"),
        ("datasets", "r"),
        ("datasets_pkey", "i"),
        ("idx_data_history_dataset", "i"),
        ("idx_prediction_sets_artifact", "i"),
        ("idx_prediction_sets_newest", "i"),
        ("idx_prediction_sets_unarchived", "i"),
        ("idx_promotions_set", "i"),
        ("idx_promotions_type", "i"),
        ("ingest_batches", "r"),
        ("ingest_batches_pkey", "i"),
        ("prediction_sets", "r"),
        ("prediction_sets_pkey", "i"),
        ("promotions", "r"),
        ("promotions_pkey", "i"),
        ("schema_migrations", "r"),
        ("schema_migrations_pkey", "i"),
        ("ux_data_segments_rows", "i"),
        ("ux_prediction_sets_one_current", "i"),
    ]
    # The same columns in the same order as SQLite's (tests/test_migrations.py).
    assert columns(postgres_url, "prediction_sets") == PREDICTION_SETS_COLUMNS
    assert columns(postgres_url, "ingest_batches") == INGEST_BATCHES_COLUMNS
    assert query(postgres_url, "SELECT version, name FROM schema_migrations ORDER BY version") == [
        (1, "phase4_baseline"),
        (2, "add_model_artifact_path"),
        (3, "add_lifecycle"),
        (4, "add_artifact_signature"),
        (5, "add_runtime"),
        (6, "index_prediction_sets"),
        (7, "add_data_segments"),
        (8, "add_ingest_batches"),
        (9, "add_ingest_batch_checksum"),
        (10, "add_schemas"),
        (11, "refuse_late_commits"),
    ]
    before = schema(postgres_url)
    assert migrate(database) == []
    assert schema(postgres_url) == before


def phase4_registry(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute((FIXTURES / "phase4_schema_postgresql.sql").read_text().encode())
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO data_history (dataset, features, target) VALUES (%s, %s, %s)",
                [("legacy", "[1.0, 2.0]", "0"), ("legacy", "[3.0, 4.0]", '"yes"'), ("other", "[5.5]", "1.25")],
            )
            cursor.executemany(
                "INSERT INTO prediction_sets (model_type, dataset, is_current, metrics) VALUES (%s, %s, %s, %s)",
                [
                    ("churn", "legacy", False, '{"accuracy": 0.81}'),
                    ("churn", "legacy", True, '{"accuracy": 0.84}'),
                    ("price", "other", True, None),
                    ("price", "other", True, '{"r2": 0.5}'),  # Phase 4 allowed two current rows
                ],
            )


def test_phase4_database_upgrades_in_place_keeping_every_row(database: PostgresDatabase, postgres_url: str) -> None:
    phase4_registry(postgres_url)
    history_before = query(postgres_url, "SELECT * FROM data_history ORDER BY id")
    sets_sql = "SELECT id, model_type, dataset, created_at, metrics FROM prediction_sets ORDER BY id"
    sets_before = query(postgres_url, sets_sql)

    assert migrate(database) == EVERY_MIGRATION

    assert query(postgres_url, "SELECT * FROM data_history ORDER BY id") == history_before
    assert query(postgres_url, sets_sql) == sets_before
    assert query(postgres_url, "SELECT model_type, id FROM prediction_sets WHERE is_current ORDER BY model_type") == [
        ("churn", 2),
        ("price", 4),
    ]
    assert query(postgres_url, "SELECT model_type, prediction_set_id, reason FROM promotions ORDER BY id") == [
        ("churn", 2, "upgrade"),
        ("price", 4, "upgrade"),
    ]
    # The upgraded registry is served like a new one: the legacy sets need training.
    sets = PredictionSetRepository(database)
    assert [(r.model_type, r.artifact) for r in sets.current_sets()] == [("churn", None), ("price", None)]


def test_kill_mid_migration_of_a_phase4_registry(
    database: PostgresDatabase, postgres_url: str, tmp_path: Path, reap: Callable[[ServerProcess], ServerProcess]
) -> None:
    """The crash point SQLite's test uses, on PostgreSQL: SIGKILL between two statements of migration 0002."""
    phase4_registry(postgres_url)
    # 0001 is a no-op on a Phase-4 database; applying it first makes the kill land inside 0002.
    MigrationRunner(database).apply(migrations_for(database, MIGRATIONS_DIR)[:1])
    database.close()
    sets_sql = "SELECT id, model_type, dataset, created_at, is_current, metrics FROM prediction_sets ORDER BY id"
    sets_before = query(postgres_url, sets_sql)

    server = reap(ServerProcess(tmp_path, db=postgres_url, env={ENV_VAR: MID_MIGRATION}))
    server.start(wait=False)
    assert server.wait_exit(timeout=60) == -signal.SIGKILL
    server.kill()
    assert "applied migration 0002" not in server.log()
    # The first ALTER TABLE ran inside the transaction the kill cut short: none of it is visible.
    assert "model_artifact_path" not in columns(postgres_url, "prediction_sets")
    assert query(postgres_url, "SELECT version FROM schema_migrations ORDER BY version") == [(1,)]
    assert query(postgres_url, sets_sql) == sets_before

    server.env = {}
    server.start()
    versions = query(postgres_url, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,), (9,), (10,), (11,)]
    assert "model_artifact_path" in columns(postgres_url, "prediction_sets")
    assert len(query(postgres_url, sets_sql)) == len(sets_before)
    server.stop()


def test_database_refuses_a_second_current_set_per_model_type(database: PostgresDatabase, postgres_url: str) -> None:
    migrate(database)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('a', 'd', TRUE)")
        conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('b', 'd', TRUE)")
        with pytest.raises(psycopg.errors.UniqueViolation, match="ux_prediction_sets_one_current"):
            conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('a', 'd', TRUE)")


def test_a_failing_migration_is_rolled_back_with_its_record(database: PostgresDatabase, tmp_path: Path) -> None:
    (tmp_path / "0001_create_t.sql").write_text("CREATE TABLE t (x INTEGER);\n")
    (tmp_path / "0002_broken.sql").write_text("ALTER TABLE t ADD COLUMN y INTEGER;\nTHIS IS NOT SQL;\n")
    runner = MigrationRunner(database)
    with pytest.raises(StorageError, match="0002_broken failed: syntax error"):
        runner.apply(discover_migrations(tmp_path))
    assert runner.applied_versions() == {1}
    assert columns(database.url, "t") == ["x"]


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    databases = [PostgresDatabase(postgres_url) for _ in range(4)]
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def start(database: PostgresDatabase) -> None:
        try:
            applied.append(migrate(database))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(d,)) for d in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    # Each migration applied exactly once, in order, whichever replica got to it first.
    assert sorted(v for versions in applied for v in versions) == EVERY_MIGRATION
    assert all(versions == sorted(versions) for versions in applied)
    assert [MigrationRunner(d).applied_versions() for d in databases] == [{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}] * 4
    for database in databases:
        database.close()


def test_concurrent_promotions_from_separate_connections_leave_exactly_one_current(postgres_url: str) -> None:
    """Each writer has its own pool, as each replica would: only the database can serialise them."""
    setup = PostgresDatabase(postgres_url)
    migrate(setup)
    setup.close()
    writers = [PredictionSetRepository(PostgresDatabase(postgres_url, busy_timeout_seconds=30)) for _ in range(4)]
    ids: list[int] = []
    errors: list[BaseException] = []
    go = threading.Barrier(len(writers))

    def train(index: int) -> None:
        go.wait()
        try:
            for round_ in range(5):
                ids.append(writers[index].insert(new_set(path=f"{index}-{round_}.joblib"), make_current=True).id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    sets = writers[0]
    assert len(ids) == 20 and {r.id for r in sets.for_model_type("iris_classifier")} == set(ids)
    current = [r.id for r in sets.for_model_type("iris_classifier") if r.is_current]
    assert len(current) == 1
    # The promotion log is in commit order: its last entry is the current set.
    log = query(postgres_url, "SELECT prediction_set_id FROM promotions ORDER BY id")
    assert len(log) == 20 and log[-1][0] == current[0]
    for writer in writers:
        writer.database.close()  # type: ignore[attr-defined]


def test_a_promotion_waiting_on_another_hosts_lock_reports_unavailable(database: PostgresDatabase) -> None:
    migrate(database)
    sets = PredictionSetRepository(database)
    first = sets.insert(new_set(), make_current=True).id
    with psycopg.connect(database.url) as other_host:
        other_host.execute("SELECT pg_advisory_xact_lock(%s::integer, hashtext('iris_classifier'))", (1886545252,))
        with pytest.raises(Unavailable, match="busy .*lock timeout"):
            sets.insert(new_set(path="b.joblib"), make_current=True)
        # Another model type is not held up.
        sets.insert(new_set(model_type="other", path="c.joblib"), make_current=True)
    assert sets.current_ids() == {"iris_classifier": first, "other": first + 2}
    assert [r.id for r in sets.for_model_type("iris_classifier")] == [first]  # the failed insert rolled back


def test_promotion_is_announced_to_listeners_on_commit(database: PostgresDatabase) -> None:
    migrate(database)
    sets = PredictionSetRepository(database)
    feed = sets.change_feed()
    assert feed is not None
    try:
        assert feed.wait(1.0) is True  # first call connects, and says "look now"
        assert feed.wait(0.2) is False
        HistoryRepository(database).append("iris", ["a"], np.ones((1, 1)), [0])
        assert feed.wait(0.2) is False  # ingesting changes no prediction set
        sets.insert(new_set(), make_current=True)
        assert feed.wait(5.0) is True
    finally:
        feed.close()


def test_an_unreachable_database_stops_start_up_with_one_clear_line() -> None:
    database = PostgresDatabase("postgresql://predserve:pw@127.0.0.1:1/none", busy_timeout_seconds=1)
    with pytest.raises(StorageError, match=r"cannot connect to the database postgresql://predserve@127.0.0.1:1/none"):
        database.prepare()
