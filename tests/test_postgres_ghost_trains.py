"""A Train commits only while its caller can still be told (issue 24, item 1): PostgreSQL frozen at every stage of
a Train, its deadline trigger alone, and both backends past a transaction's deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.waiting import wait_until
from predserve.server.errors import Cancelled, Unavailable
from predserve.server.settings import MIGRATIONS_DIR
from predserve.server.storage.migrations import MigrationRunner, migrations_for
from predserve.server.storage.postgres import LATE_COMMIT, PostgresDatabase
from predserve.server.storage.sqlite import SqliteDatabase
from tests.partitions import (
    ALGORITHM,
    FREEZE_AT,
    FROZEN_FOR,
    TRAIN_DEADLINE,
    registry_answers,
    replica_with_iris,
    train_reporting,
)
from tests.postgres_cluster import PostgresCluster
from tests.support import ServerProcess
from tests.test_postgres_outage import (
    RECOVERY_WAIT,
    own_cluster,
)
from tests.test_postgres_registry import migrate, query

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
__all__ = ["own_cluster"]  # a fixture, used by name


def test_a_train_whose_caller_was_told_it_failed_records_nothing(
    own_cluster: Callable[..., PostgresCluster], reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    cluster, url, replica = replica_with_iris(own_cluster, reap, tmp_path)
    began = time.monotonic()
    with replica.client() as client:
        told = {client.train("iris_classifier", "iris", ALGORITHM).prediction_set_id}
    duration = time.monotonic() - began
    failed: list[tuple[int, str]] = []
    for fraction in FREEZE_AT:
        outcome: dict[str, object] = {}
        caller = threading.Thread(target=train_reporting, args=(replica, outcome))
        caller.start()
        offset_ms = round(fraction * duration * 1000)
        time.sleep(offset_ms / 1000)
        cluster.freeze()
        time.sleep(FROZEN_FOR)
        cluster.thaw()
        caller.join(timeout=30)
        if "set" in outcome:
            told.add(int(str(outcome["set"])))
        else:
            assert outcome["code"] in ("DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED"), outcome
            failed.append((offset_ms, str(outcome["code"])))
        wait_until(lambda: registry_answers(replica), RECOVERY_WAIT, "the registry to answer again")
    time.sleep(TRAIN_DEADLINE)  # any Train still running on the server has given up or committed by now
    with psycopg.connect(url) as conn:
        recorded = {
            row[0] for row in conn.execute("SELECT id FROM prediction_sets WHERE model_type = 'iris_classifier'")
        }
    print(f"a Train took {duration:.2f}s; told failed at (ms, code) {failed}")
    print(f"told of sets {sorted(told)}; recorded {sorted(recorded)}")
    assert len(failed) >= 5, f"the freezes did not catch enough Trains: {failed}"
    assert recorded == told, f"recorded sets no caller was told of: {sorted(recorded - told)}"


def insert_legacy_set(conn: Any) -> None:
    conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current, metrics) VALUES (?, ?, FALSE, ?)",
                 ("deadline_probe", "none", "{}"))  # fmt: skip


def test_postgres_refuses_the_commit_itself_once_the_deadline_has_passed(postgres_url: str) -> None:
    """Migration 0011's deferred trigger, alone: a transaction that carries a passed deadline is refused at COMMIT
    by PostgreSQL's own clock (as one that a frozen server resumes after its caller gave up), one with time left
    commits, and one without a deadline is untouched."""
    database = PostgresDatabase(postgres_url)
    migrate(database)
    with psycopg.connect(postgres_url) as conn, pytest.raises(psycopg.errors.RaiseException, match=LATE_COMMIT):
        with conn.transaction():
            conn.execute("SELECT set_config('predserve.commit_by', %s, true)", ("2000-01-01T00:00:00+00:00",))
            conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('late', 'x', FALSE)")
    with database.writing(commit_by=time.monotonic() + 30) as conn:
        insert_legacy_set(conn)
    with database.writing() as conn:
        insert_legacy_set(conn)
    assert query(postgres_url, "SELECT model_type, COUNT(*) FROM prediction_sets GROUP BY model_type") == [
        ("deadline_probe", 2)
    ]
    database.close()


def test_a_transaction_past_its_deadline_commits_nothing_in_either_backend(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL's connection is cut at the deadline (or its COMMIT refused); SQLite checks before COMMIT."""
    databases: list[PostgresDatabase | SqliteDatabase] = [
        PostgresDatabase(postgres_url),
        SqliteDatabase(tmp_path / "registry.db"),
    ]
    for database in databases:
        MigrationRunner(database).apply(migrations_for(database, MIGRATIONS_DIR))
        with pytest.raises((Cancelled, Unavailable)), database.writing(time.monotonic() + 0.2) as conn:
            insert_legacy_set(conn)
            time.sleep(0.4)  # the commit comes after the deadline
        with database.reading() as conn:
            count = conn.execute("SELECT COUNT(*) FROM prediction_sets").fetchone()
        assert count is not None and count[0] == 0
        database.close()
