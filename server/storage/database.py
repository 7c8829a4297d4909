"""Every SQL statement predserve runs, and the lifetime of its SQLite connections.

A connection is opened per unit of work: SQLite connections are cheap, and this keeps them
out of the way of gRPC's worker threads. Writes take the lock up front (BEGIN IMMEDIATE) so
that a read-then-write never deadlocks against another writer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server import failpoints
from server.domain import (
    ArtifactInfo,
    Dataset,
    HistoryRow,
    NewPredictionSet,
    PredictionSetRecord,
    SelfCheck,
)
from server.errors import ResourceExhausted, StorageError, Unavailable

logger = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def discover_migrations(directory: Path) -> list[Migration]:
    """The numbered migrations in a directory, in order."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if not match:
            raise StorageError(f"migration file name {path.name!r} is not NNNN_what_it_does.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    return migrations


class Database:
    """Opens configured connections to one SQLite file."""

    def __init__(self, path: Path, busy_timeout_seconds: float = 5.0) -> None:
        self.path = path
        self.busy_timeout_seconds = busy_timeout_seconds

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_seconds, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            # FULL makes a commit durable on its own in WAL mode: an acknowledged Train survives power loss.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.OperationalError as exc:
            conn.close()
            raise _translate(exc) from exc
        return conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc
        finally:
            conn.close()

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that holds the write lock from its first statement."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                _roll_back(conn)
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise _translate(exc) from exc
        finally:
            conn.close()

    def prepare(self) -> None:
        """Creates a missing database file owner-only; SQLite gives its -wal and -shm files the same mode.

        Whoever can write this file chooses which artifact the server unpickles, so an existing file
        that others may write is reported.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot create database {self.path}: {exc.strerror}") from exc
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o022:
            logger.warning(
                "database %s is writable by group or others (mode %04o): they can choose which artifact the "
                "server loads; chmod 600 it",
                self.path,
                mode,
            )

    def enable_wal(self) -> None:
        with self.reading() as conn:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            logger.warning("database %s stays in journal mode %s, not WAL", self.path, mode)

    def integrity_problems(self) -> list[str]:
        with self.reading() as conn:
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows


def _roll_back(conn: sqlite3.Connection) -> None:
    """Rolls back unless SQLite already has (it does on a full disk or an I/O error); a failing
    ROLLBACK would otherwise hide the error that caused it."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _translate(exc: sqlite3.OperationalError) -> Exception:
    message = str(exc)
    if "disk is full" in message:
        return ResourceExhausted(f"no space left in the database: {message}")
    if "locked" in message or "busy" in message:
        return Unavailable(f"the database is busy (another writer holds its lock): {message}")
    if "readonly" in message or "read-only" in message:
        return StorageError(f"the database is read-only: {message}")
    return StorageError(f"database error: {message}")


class MigrationRunner:
    """Applies numbered migrations in order, each in one transaction with the record of it."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def applied_versions(self) -> set[int]:
        with self.database.reading() as conn:
            self._ensure_bookkeeping(conn)
            return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}

    def apply(self, migrations: Sequence[Migration]) -> list[Migration]:
        applied_now = []
        for migration in migrations:
            if self._apply_one(migration):
                applied_now.append(migration)
        return applied_now

    def _apply_one(self, migration: Migration) -> bool:
        conn = self.database._connect()
        try:
            self._ensure_bookkeeping(conn)
            conn.execute("BEGIN IMMEDIATE")
            already = conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone()
            if already:
                conn.execute("ROLLBACK")
                return False
            try:
                _run_statements(conn, migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                    (migration.version, migration.name),
                )
                conn.execute("COMMIT")
            except BaseException:
                _roll_back(conn)
                raise
            logger.info("applied migration %04d_%s", migration.version, migration.name)
            return True
        except sqlite3.Error as exc:
            raise StorageError(f"migration {migration.version:04d}_{migration.name} failed: {exc}") from exc
        finally:
            conn.close()

    @staticmethod
    def _ensure_bookkeeping(conn: sqlite3.Connection) -> None:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    INTEGER PRIMARY KEY,
                   name       TEXT NOT NULL,
                   applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
               )"""
        )


def _run_statements(conn: sqlite3.Connection, script: str) -> None:
    """Runs each complete statement of a script inside the caller's open transaction."""
    pending = ""
    executed = 0
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if executed:
                # Between two statements, inside the transaction: a crash here must leave no trace.
                failpoints.reach(failpoints.MID_MIGRATION)
            conn.execute(pending)
            executed += 1
            pending = ""
    if pending.strip() and not _only_comments(pending):
        raise StorageError(f"incomplete SQL statement at the end of a migration: {pending.strip()[:80]}")


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


class HistoryRepository:
    """data_history and datasets: the observations models are trained on."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def append(self, dataset: str, feature_names: Sequence[str], rows: Sequence[HistoryRow]) -> int:
        """Appends rows in one transaction and returns the dataset's row count afterwards."""
        with self.database.writing() as conn:
            if feature_names:
                conn.execute(
                    "INSERT INTO datasets (name, feature_names) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET feature_names = excluded.feature_names",
                    (dataset, json.dumps(list(feature_names))),
                )
            conn.executemany(
                "INSERT INTO data_history (dataset, features, target) VALUES (?, ?, ?)",
                [(dataset, json.dumps(list(row.features)), json.dumps(row.target)) for row in rows],
            )
            return int(conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (dataset,)).fetchone()[0])

    def feature_count(self, dataset: str) -> int | None:
        """The number of features of the dataset's first row, or None for an empty dataset."""
        with self.database.reading() as conn:
            row = conn.execute(
                "SELECT features FROM data_history WHERE dataset = ? ORDER BY id LIMIT 1", (dataset,)
            ).fetchone()
        return None if row is None else len(json.loads(row[0]))

    def load(self, dataset: str) -> Dataset | None:
        with self.database.reading() as conn:
            rows = conn.execute(
                "SELECT features, target FROM data_history WHERE dataset = ? ORDER BY id", (dataset,)
            ).fetchall()
            names_row = conn.execute("SELECT feature_names FROM datasets WHERE name = ?", (dataset,)).fetchone()
        if not rows:
            return None
        return Dataset(
            name=dataset,
            feature_names=tuple(json.loads(names_row[0])) if names_row else (),
            features=[json.loads(row[0]) for row in rows],
            targets=[json.loads(row[1]) for row in rows],
        )


_SET_COLUMNS = (
    "id, model_type, dataset, created_at, is_current, metrics, model_artifact_path, artifact_sha256, "
    "artifact_size_bytes, algorithm, task, params, feature_names, classes, training_rows, fit_seconds, "
    "sklearn_version, environment, self_check, origin, archived_at, artifact_signature"
)


class PredictionSetRepository:
    """prediction_sets: every trained pipeline, which file holds it, and which one is current."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def insert(self, new: NewPredictionSet, make_current: bool) -> int:
        """Records a prediction set, and if asked makes it the only current one of its type, atomically."""
        with self.database.writing() as conn:
            cursor = conn.execute(
                """INSERT INTO prediction_sets (
                       model_type, dataset, is_current, metrics, model_artifact_path, artifact_sha256,
                       artifact_size_bytes, algorithm, task, params, feature_names, classes,
                       training_rows, fit_seconds, sklearn_version, environment, self_check, origin,
                       artifact_signature)
                   VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    new.model_type,
                    new.dataset,
                    json.dumps(new.metrics),
                    new.artifact.relative_path,
                    new.artifact.sha256,
                    new.artifact.size_bytes,
                    new.algorithm,
                    new.task,
                    json.dumps(new.params),
                    json.dumps(list(new.feature_names)),
                    None if new.classes is None else json.dumps(list(new.classes)),
                    new.training_rows,
                    new.fit_seconds,
                    new.environment.get("sklearn"),
                    json.dumps(new.environment),
                    json.dumps({"inputs": new.self_check.inputs, "outputs": new.self_check.outputs}),
                    new.origin,
                    new.artifact.signature,
                ),
            )
            set_id = int(cursor.lastrowid or 0)
            if make_current:
                _make_current(conn, new.model_type, set_id, "import" if new.origin == "imported" else "train")
            return set_id

    def promote(self, set_id: int, reason: str) -> None:
        """Makes an existing set the only current one of its model type and logs the promotion."""
        with self.database.writing() as conn:
            row = conn.execute("SELECT model_type FROM prediction_sets WHERE id = ?", (set_id,)).fetchone()
            if row is None:
                raise StorageError(f"prediction set {set_id} vanished before its promotion")
            _make_current(conn, row[0], set_id, reason)

    def previous_current(self, model_type: str) -> int | None:
        """The set that was current before the present one, from the promotion log."""
        with self.database.reading() as conn:
            row = conn.execute(
                """SELECT p.prediction_set_id FROM promotions p
                    WHERE p.model_type = ?
                      AND p.prediction_set_id NOT IN (
                          SELECT id FROM prediction_sets WHERE model_type = ? AND is_current)
                    ORDER BY p.id DESC LIMIT 1""",
                (model_type, model_type),
            ).fetchone()
        return None if row is None else int(row[0])

    def current_ids(self) -> dict[str, int]:
        with self.database.reading() as conn:
            rows = conn.execute("SELECT model_type, id FROM prediction_sets WHERE is_current").fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def archive(self, set_ids: Sequence[int]) -> None:
        """Marks sets whose artifacts retention deleted; the rows stay as history."""
        with self.database.writing() as conn:
            conn.executemany(
                "UPDATE prediction_sets SET archived_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                "WHERE id = ? AND NOT is_current",
                [(set_id,) for set_id in set_ids],
            )

    def current_sets(self) -> list[PredictionSetRecord]:
        with self.database.reading() as conn:
            rows = conn.execute(
                f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE is_current ORDER BY model_type"
            ).fetchall()
        return [_record(row) for row in rows]

    def model_types(self) -> list[str]:
        with self.database.reading() as conn:
            rows = conn.execute("SELECT DISTINCT model_type FROM prediction_sets ORDER BY model_type").fetchall()
        return [row[0] for row in rows]

    def get(self, set_id: int) -> PredictionSetRecord | None:
        with self.database.reading() as conn:
            row = conn.execute(f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE id = ?", (set_id,)).fetchone()
        return None if row is None else _record(row)

    def for_model_type(self, model_type: str) -> list[PredictionSetRecord]:
        """Every set of a model type, newest first."""
        with self.database.reading() as conn:
            rows = conn.execute(
                f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE model_type = ? ORDER BY id DESC",
                (model_type,),
            ).fetchall()
        return [_record(row) for row in rows]

    def artifact_paths(self) -> set[str]:
        with self.database.reading() as conn:
            rows = conn.execute(
                "SELECT model_artifact_path FROM prediction_sets WHERE model_artifact_path IS NOT NULL"
            ).fetchall()
        return {row[0] for row in rows}


def _json(text: str | None, default: Any) -> Any:
    return default if text is None else json.loads(text)


def _record(row: sqlite3.Row) -> PredictionSetRecord:
    artifact = None
    if row["model_artifact_path"] is not None:
        artifact = ArtifactInfo(
            relative_path=row["model_artifact_path"],
            sha256=row["artifact_sha256"] or "",
            size_bytes=int(row["artifact_size_bytes"] or 0),
            signature=row["artifact_signature"],
        )
    self_check = _json(row["self_check"], None)
    classes = _json(row["classes"], None)
    return PredictionSetRecord(
        id=int(row["id"]),
        model_type=row["model_type"],
        dataset=row["dataset"],
        created_at=row["created_at"],
        is_current=bool(row["is_current"]),
        metrics=_json(row["metrics"], {}) or {},
        algorithm=row["algorithm"],
        task=row["task"],
        params=_json(row["params"], {}),
        feature_names=tuple(_json(row["feature_names"], [])),
        classes=None if classes is None else tuple(classes),
        training_rows=row["training_rows"],
        fit_seconds=row["fit_seconds"],
        artifact=artifact,
        sklearn_version=row["sklearn_version"],
        environment=_json(row["environment"], {}),
        self_check=None if self_check is None else SelfCheck(self_check["inputs"], self_check["outputs"]),
        origin=row["origin"],
        archived_at=row["archived_at"],
    )


def _make_current(conn: sqlite3.Connection, model_type: str, set_id: int, reason: str) -> None:
    conn.execute(
        "UPDATE prediction_sets SET is_current = 0 WHERE model_type = ? AND is_current AND id != ?",
        (model_type, set_id),
    )
    conn.execute("UPDATE prediction_sets SET is_current = 1 WHERE id = ?", (set_id,))
    conn.execute(
        "INSERT INTO promotions (model_type, prediction_set_id, reason) VALUES (?, ?, ?)",
        (model_type, set_id, reason),
    )
