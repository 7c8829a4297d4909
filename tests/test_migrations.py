"""Migrations: numbered, applied once, recorded, and upgrading a Phase-4 database keeps every row."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from predserve.server.errors import Unavailable
from predserve.server.settings import MIGRATIONS_DIR
from predserve.server.storage.migrations import MigrationRunner, dialect_migrations, discover_migrations
from predserve.server.storage.sqlite import SqliteDatabase
from tests.support import EVERY_MIGRATION

FIXTURES = Path(__file__).parent / "fixtures"

# prediction_sets after every migration, in order; PostgreSQL must match it (tests/test_postgres_registry.py).
PREDICTION_SETS_COLUMNS = [
    "id",
    "model_type",
    "dataset",
    "created_at",
    "is_current",
    "metrics",
    "model_artifact_path",
    "artifact_sha256",
    "artifact_size_bytes",
    "algorithm",
    "task",
    "params",
    "feature_names",
    "classes",
    "training_rows",
    "fit_seconds",
    "sklearn_version",
    "environment",
    "self_check",
    "origin",
    "archived_at",
    "artifact_signature",
    "runtime_path",
    "runtime_sha256",
    "runtime_size_bytes",
    "runtime_signature",
    "runtime_record",
    "input_schema",
]
# ingest_batches after every migration; PostgreSQL must match it too.
INGEST_BATCHES_COLUMNS = [
    "ingest_id",
    "batch_number",
    "dataset",
    "first_row",
    "row_count",
    "recorded_at",
    "content_sha256",
]


def migrate(path: Path) -> list[int]:
    runner = MigrationRunner(SqliteDatabase(path))
    return [m.version for m in runner.apply(dialect_migrations(MIGRATIONS_DIR, SqliteDatabase.migrations_subdir))]


def schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()


def columns(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def phase4_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "phase4_schema.sql").read_text())
        conn.executemany(
            "INSERT INTO data_history (dataset, features, target) VALUES (?, ?, ?)",
            [("legacy", "[1.0, 2.0]", "0"), ("legacy", "[3.0, 4.0]", '"yes"'), ("other", "[5.5]", "1.25")],
        )
        conn.executemany(
            "INSERT INTO prediction_sets (model_type, dataset, is_current, metrics) VALUES (?, ?, ?, ?)",
            [
                ("churn", "legacy", 0, '{"accuracy": 0.81}'),
                ("churn", "legacy", 1, '{"accuracy": 0.84}'),
                ("price", "other", 1, None),
                ("price", "other", 1, '{"r2": 0.5}'),  # Phase 4 allowed two current rows
            ],
        )


def test_migration_files_are_numbered_contiguously_from_one() -> None:
    names = sorted(p.name for p in [*MIGRATIONS_DIR.glob("*.sql"), *(MIGRATIONS_DIR / "sqlite").glob("*.sql")])
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", n) for n in names), names
    assert [int(n[:4]) for n in names] == EVERY_MIGRATION


def test_blank_database_gets_the_exact_schema(tmp_path: Path) -> None:
    db = tmp_path / "blank.db"
    assert migrate(db) == EVERY_MIGRATION
    assert [name for name, _ in schema(db)] == [
        "data_history",
        "data_segments",
        "datasets",
        "idx_data_history_dataset",
        "idx_prediction_sets_artifact",
        "idx_prediction_sets_newest",
        "idx_prediction_sets_unarchived",
        "idx_promotions_set",
        "idx_promotions_type",
        "ingest_batches",
        "prediction_sets",
        "promotions",
        "schema_migrations",
        "ux_data_segments_rows",
        "ux_prediction_sets_one_current",
    ]
    assert columns(db, "prediction_sets") == PREDICTION_SETS_COLUMNS
    assert columns(db, "ingest_batches") == INGEST_BATCHES_COLUMNS
    with sqlite3.connect(db) as conn:
        recorded = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [
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


def test_running_migrations_twice_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "twice.db"
    migrate(db)
    before = schema(db)
    assert migrate(db) == []
    assert schema(db) == before


def test_phase4_database_upgrades_in_place_keeping_every_row(tmp_path: Path) -> None:
    db = tmp_path / "phase4.db"
    phase4_database(db)
    with sqlite3.connect(db) as conn:
        history_before = conn.execute("SELECT * FROM data_history ORDER BY id").fetchall()
        sets_before = conn.execute(
            "SELECT id, model_type, dataset, created_at, metrics FROM prediction_sets"
        ).fetchall()

    assert migrate(db) == EVERY_MIGRATION

    with sqlite3.connect(db) as conn:
        promotions = conn.execute("SELECT model_type, prediction_set_id, reason FROM promotions").fetchall()
        assert conn.execute("SELECT * FROM data_history ORDER BY id").fetchall() == history_before
        assert (
            conn.execute("SELECT id, model_type, dataset, created_at, metrics FROM prediction_sets").fetchall()
            == sets_before
        )
        current = conn.execute(
            "SELECT model_type, id FROM prediction_sets WHERE is_current ORDER BY model_type"
        ).fetchall()
        assert conn.execute("SELECT COUNT(*) FROM prediction_sets WHERE model_artifact_path IS NULL").fetchone() == (4,)
    # The newest of price's two current rows stays current; the other row stays, no longer current.
    assert current == [("churn", 2), ("price", 4)]
    assert promotions == [("churn", 2, "upgrade"), ("price", 4, "upgrade")]


def test_database_refuses_a_second_current_set_per_model_type(tmp_path: Path) -> None:
    db = tmp_path / "unique.db"
    migrate(db)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('a', 'd', 1)")
        conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('b', 'd', 1)")
        conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('a', 'd', 0)")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('a', 'd', 1)")


def test_a_failing_migration_is_rolled_back_with_its_record(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_create_t.sql").write_text("CREATE TABLE t (x INTEGER);\n")
    (directory / "0002_broken.sql").write_text("ALTER TABLE t ADD COLUMN y INTEGER;\nTHIS IS NOT SQL;\n")
    db = tmp_path / "broken.db"
    runner = MigrationRunner(SqliteDatabase(db))
    with pytest.raises(Exception, match="0002_broken"):
        runner.apply(discover_migrations(directory))
    assert runner.applied_versions() == {1}
    assert columns(db, "t") == ["x"]


def test_a_locked_database_reports_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    migrate(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        database = SqliteDatabase(db, busy_timeout_seconds=0.2)
        with pytest.raises(Unavailable, match="busy"):
            with database.writing() as conn:
                conn.execute("DELETE FROM datasets")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
