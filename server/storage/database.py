"""Every SQL statement predserve runs, and the lifetime of its database connections.

SQLite is the embedded default: a connection is opened per unit of work (SQLite connections are
cheap, and this keeps them out of the way of gRPC's worker threads), and writes take the lock up
front (BEGIN IMMEDIATE) so that a read-then-write never deadlocks against another writer.

PostgreSQL is the registry that several replicas share (`--db postgresql://...`): connections come
from a psycopg_pool pool, a change of the current set is serialised per model type by a
transaction-scoped advisory lock (the partial unique index stays the arbiter), and every change is
announced with NOTIFY so that the other replicas reload at once. The repositories' statements are
written once, with qmark placeholders, in SQL that both databases accept.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg_pool import ConnectionPool

from server import failpoints
from server.domain import (
    ArtifactInfo,
    Dataset,
    HistoryRow,
    NewPredictionSet,
    PredictionSetRecord,
    SelfCheck,
)
from server.errors import PredserveError, ResourceExhausted, StorageError, Unavailable
from server.storage.permissions import warn_if_others_can_write

logger = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
POSTGRES_URL_SCHEMES = ("postgresql://", "postgres://")
# The migrations of each dialect: db/migrations/NNNN_x.sql for SQLite, db/migrations/postgresql/NNNN_x.sql
# for PostgreSQL, with the same numbers and names.
POSTGRES_MIGRATIONS_SUBDIR = "postgresql"
# NOTIFY channel on which a recorded or promoted prediction set is announced; the payload is the model type.
CHANGES_CHANNEL = "predserve_prediction_sets"
# Advisory lock keys (two int4 keys: a namespace, then a value), chosen not to meet other applications' keys.
_MODEL_TYPE_LOCK = int.from_bytes(b"pred", "big")
_MIGRATION_LOCK = int.from_bytes(b"migr", "big")


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


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the repositories use of a connection: sqlite3.Connection, or _PostgresConnection."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


class ChangeFeed(Protocol):
    def wait(self, timeout: float) -> bool:
        """Blocks until another process announces a change (True) or the timeout passes (False)."""
        ...

    def close(self) -> None: ...


class RegistryDatabase(Protocol):
    """The registry the repositories work on: Database (SQLite) or PostgresDatabase."""

    # SQL for "now" in the format the database stores timestamps in.
    now_sql: str

    @property
    def name(self) -> str: ...

    def reading(self) -> AbstractContextManager[Connection]: ...

    def writing(self) -> AbstractContextManager[Connection]: ...

    def lock_model_type(self, conn: Connection, model_type: str) -> None: ...

    def announce_change(self, conn: Connection, model_type: str) -> None: ...

    def change_feed(self) -> ChangeFeed | None: ...


def open_database(location: str | Path, busy_timeout_seconds: float = 5.0) -> Database | PostgresDatabase:
    """The registry a --db value names: a postgresql:// URL, or else the path of a SQLite file."""
    if is_postgres_url(str(location)):
        return PostgresDatabase(str(location), busy_timeout_seconds)
    return Database(Path(location), busy_timeout_seconds)


def is_postgres_url(location: str) -> bool:
    return location.startswith(POSTGRES_URL_SCHEMES)


def migrations_for(database: Database | PostgresDatabase, sqlite_directory: Path) -> list[Migration]:
    """The migrations of the database's dialect; the PostgreSQL ones sit in a subdirectory."""
    if isinstance(database, PostgresDatabase):
        return discover_migrations(sqlite_directory / POSTGRES_MIGRATIONS_SUBDIR)
    return discover_migrations(sqlite_directory)


class Database:
    """Opens configured connections to one SQLite file."""

    now_sql = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

    def __init__(self, path: Path, busy_timeout_seconds: float = 5.0) -> None:
        self.path = path
        self.busy_timeout_seconds = busy_timeout_seconds

    @property
    def name(self) -> str:
        return str(self.path)

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
        warn_if_others_can_write(
            self.path, "database", "they can choose which artifact the server loads", "chmod 600 it"
        )

    def close(self) -> None:
        """Nothing to release: every unit of work opens and closes its own connection."""

    def lock_model_type(self, conn: Connection, model_type: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the one write lock of the whole file."""

    def announce_change(self, conn: Connection, model_type: str) -> None:
        """Nothing to do: SQLite cannot signal other processes; they poll (see LiveReloader)."""

    def change_feed(self) -> ChangeFeed | None:
        return None

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


class PostgresDatabase:
    """A pool of connections to one PostgreSQL database, shared by every replica.

    The pool belongs to one process: close() it before a fork, and the child opens its own on first use.
    """

    now_sql = "now()"

    def __init__(self, url: str, busy_timeout_seconds: float = 5.0, max_connections: int = 8) -> None:
        self.url = url
        self.busy_timeout_seconds = busy_timeout_seconds
        self.max_connections = max_connections
        self._pool: ConnectionPool | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        # A pool inherited through fork() must never be closed or collected here: its sockets are the parent's.
        self._inherited: list[ConnectionPool] = []

    @property
    def name(self) -> str:
        return redact_url(self.url)

    def prepare(self) -> None:
        """Proves the database can be reached, so that a wrong URL stops start-up with one clear line."""
        try:
            with psycopg.connect(self.url, connect_timeout=max(2, int(self.busy_timeout_seconds))):
                pass
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to the database {self.name}: {_first_line(exc)}") from exc

    def enable_wal(self) -> None:
        """Nothing to do: PostgreSQL always writes ahead."""

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.close()
            self._pool = None

    def _connections(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is not None and self._pool_pid != os.getpid():
                self._inherited.append(self._pool)
                self._pool = None
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.max_connections,
                    kwargs={"autocommit": True, "application_name": "predserve", "row_factory": _row_factory},
                    configure=self._configure,
                    timeout=self.busy_timeout_seconds,
                    name="predserve",
                    open=True,
                )
                self._pool_pid = os.getpid()
            return self._pool

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # SQLite's busy timeout, here: a write waiting longer than this for a lock fails as UNAVAILABLE.
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self.busy_timeout_seconds * 1000)}ms",))

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        try:
            with self._connections().connection() as conn:
                yield _PostgresConnection(conn)
        except psycopg.OperationalError as exc:
            raise _translate_postgres(exc) from exc

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """One transaction; PostgreSQL locks rows as they are written, and lock_model_type serialises promotions."""
        try:
            with self._connections().connection() as conn, conn.transaction():
                yield _PostgresConnection(conn)
        except psycopg.OperationalError as exc:
            raise _translate_postgres(exc) from exc

    def lock_model_type(self, conn: Connection, model_type: str) -> None:
        """Serialises every change of one model type's current set across hosts until the transaction ends.

        Without it, two replicas promoting at once would both read the old current row, and the second
        commit would break the unique index instead of demoting the first one's set.
        """
        conn.execute("SELECT pg_advisory_xact_lock(?::integer, hashtext(?))", (_MODEL_TYPE_LOCK, model_type))

    def announce_change(self, conn: Connection, model_type: str) -> None:
        """NOTIFY, delivered to every listening replica when (and only if) the transaction commits."""
        conn.execute("SELECT pg_notify(?, ?)", (CHANGES_CHANNEL, model_type))

    def change_feed(self) -> ChangeFeed | None:
        return PostgresChangeFeed(self.url)


class _PostgresConnection:
    """A psycopg connection that takes the repositories' qmark statements (psycopg itself wants %s)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self.conn.execute(_format_placeholders(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(_format_placeholders(sql), [tuple(p) for p in parameters])

    def execute_script(self, script: str) -> None:
        """Several statements in one call: psycopg allows it for a query without parameters."""
        self.conn.execute(script.encode())


def _format_placeholders(sql: str) -> str:
    # Statements here are predserve's own and never hold a literal '?'.
    return sql.replace("%", "%%").replace("?", "%s")


class _Row:
    """A row readable by position and by column name, as sqlite3.Row is."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key] if isinstance(key, str) else key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)


def _row_factory(cursor: Any) -> Any:
    names = {column.name: index for index, column in enumerate(cursor.description or ())}
    return lambda values: _Row(names, values)


class PostgresChangeFeed:
    """LISTEN on a connection of its own; wait() returns as soon as a NOTIFY arrives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._broken = False

    def wait(self, timeout: float) -> bool:
        try:
            if self._conn is None:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, int(timeout)))
                self._conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                if self._broken:
                    logger.info("live reload: listening for changes again")
                self._broken = False
                return True  # announcements made while nobody listened are lost: look once now
            return any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1))
        except psycopg.Error as exc:
            if not self._broken:
                logger.warning("live reload: no notifications from the database (%s); polling meanwhile", exc)
            self._broken = True
            self.close()
            threading.Event().wait(timeout)
            return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable URL)"
    host = params.get("host", "")
    port = f":{params['port']}" if params.get("port") else ""
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname', '')}"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


_POSTGRES_BUSY = (
    psycopg.errors.LockNotAvailable,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.QueryCanceled,
)


def _translate_postgres(exc: psycopg.OperationalError) -> Exception:
    message = _first_line(exc)
    if isinstance(exc, psycopg.errors.DiskFull):
        return ResourceExhausted(f"no space left in the database: {message}")
    if isinstance(exc, _POSTGRES_BUSY):
        return Unavailable(f"the database is busy (another writer holds its lock): {message}")
    # A connection refused, dropped or timed out, a database shutting down: another try may well work.
    return Unavailable(f"the database cannot be reached: {message}")


class MigrationRunner:
    """Applies numbered migrations in order, each in one transaction with the record of it."""

    def __init__(self, database: Database | PostgresDatabase) -> None:
        self.database = database

    def applied_versions(self) -> set[int]:
        if isinstance(self.database, PostgresDatabase):
            with self.database.writing() as conn:
                _postgres_bookkeeping(conn)
                return {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
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
        if isinstance(self.database, PostgresDatabase):
            return _apply_postgres(self.database, migration)
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


def _postgres_bookkeeping(conn: Connection) -> None:
    """Creates schema_migrations; the advisory lock first, so replicas starting together take turns."""
    conn.execute("SELECT set_config('lock_timeout', '60s', true)")
    conn.execute("SELECT pg_advisory_xact_lock(?::integer, 0)", (_MIGRATION_LOCK,))
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    INTEGER PRIMARY KEY,
               name       TEXT NOT NULL,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
           )"""
    )


def _apply_postgres(database: PostgresDatabase, migration: Migration) -> bool:
    """PostgreSQL's DDL is transactional: the whole file and its record commit together, or nothing does."""
    try:
        with database.writing() as conn:
            _postgres_bookkeeping(conn)
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone():
                return False
            assert isinstance(conn, _PostgresConnection)
            conn.execute_script(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (migration.version, migration.name)
            )
    except (psycopg.Error, PredserveError) as exc:
        raise StorageError(f"migration {migration.version:04d}_{migration.name} failed: {_first_line(exc)}") from exc
    logger.info("applied migration %04d_%s", migration.version, migration.name)
    return True


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

    def __init__(self, database: RegistryDatabase) -> None:
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

    def __init__(self, database: RegistryDatabase) -> None:
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
                   VALUES (?, ?, FALSE, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   RETURNING id""",
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
            set_id = int(cursor.fetchall()[0][0])
            if make_current:
                self._make_current(conn, new.model_type, set_id, "import" if new.origin == "imported" else "train")
            else:
                self.database.announce_change(conn, new.model_type)
            return set_id

    def promote(self, set_id: int, reason: str) -> None:
        """Makes an existing set the only current one of its model type and logs the promotion."""
        with self.database.writing() as conn:
            row = conn.execute("SELECT model_type FROM prediction_sets WHERE id = ?", (set_id,)).fetchone()
            if row is None:
                raise StorageError(f"prediction set {set_id} vanished before its promotion")
            self._make_current(conn, row[0], set_id, reason)

    def _make_current(self, conn: Connection, model_type: str, set_id: int, reason: str) -> None:
        self.database.lock_model_type(conn, model_type)
        conn.execute(
            "UPDATE prediction_sets SET is_current = FALSE WHERE model_type = ? AND is_current AND id != ?",
            (model_type, set_id),
        )
        conn.execute("UPDATE prediction_sets SET is_current = TRUE WHERE id = ?", (set_id,))
        conn.execute(
            "INSERT INTO promotions (model_type, prediction_set_id, reason) VALUES (?, ?, ?)",
            (model_type, set_id, reason),
        )
        self.database.announce_change(conn, model_type)

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
                f"UPDATE prediction_sets SET archived_at = {self.database.now_sql} WHERE id = ? AND NOT is_current",
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

    def change_feed(self) -> ChangeFeed | None:
        """Announcements of sets recorded or promoted by other processes, where the database makes them."""
        return self.database.change_feed()

    def artifact_paths(self) -> set[str]:
        with self.database.reading() as conn:
            rows = conn.execute(
                "SELECT model_artifact_path FROM prediction_sets WHERE model_artifact_path IS NOT NULL"
            ).fetchall()
        return {row[0] for row in rows}


def _json(text: str | None, default: Any) -> Any:
    return default if text is None else json.loads(text)


def _timestamp(value: str | dt.datetime | None) -> Any:
    """SQLite stores ISO-8601 text; PostgreSQL's timestamptz is rendered in the very same form."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return value


def _record(row: Any) -> PredictionSetRecord:
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
        created_at=_timestamp(row["created_at"]),
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
        archived_at=_timestamp(row["archived_at"]),
    )
