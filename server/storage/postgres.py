"""The registry several replicas share: a PostgreSQL database, its connection pool and its change feed.

Connections come from a psycopg_pool pool; a change of the current set is serialised per model type
by a transaction-scoped advisory lock (the partial unique index stays the arbiter), and every change
is announced with NOTIFY so that the other replicas reload at once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg_pool import ConnectionPool

from server.errors import ResourceExhausted, StorageError, Unavailable

if TYPE_CHECKING:
    from server.storage.databases import Connection

logger = logging.getLogger(__name__)

POSTGRES_URL_SCHEMES = ("postgresql://", "postgres://")
# NOTIFY channel on which a recorded or promoted prediction set is announced; the payload is the model type.
CHANGES_CHANNEL = "predserve_prediction_sets"
# Advisory lock keys (two int4 keys: a namespace, then a value), chosen not to meet other applications' keys.
_MODEL_TYPE_LOCK = int.from_bytes(b"pred", "big")
_MIGRATION_LOCK = int.from_bytes(b"migr", "big")


def is_postgres_url(location: str) -> bool:
    return location.startswith(POSTGRES_URL_SCHEMES)


class PostgresDatabase:
    """A pool of connections to one PostgreSQL database, shared by every replica.

    The pool belongs to one process: close() it before a fork, and the child opens its own on first use.
    """

    now_sql = "now()"
    timestamp_type = "TIMESTAMPTZ"
    migrations_subdir = "postgresql"

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

    def prepare(self, check_integrity: bool = True) -> None:
        """Proves the database can be reached, so that a wrong URL stops start-up with one clear line.
        PostgreSQL checksums its own pages (initdb --data-checksums); there is no file to check here."""
        try:
            with psycopg.connect(self.url, connect_timeout=max(2, int(self.busy_timeout_seconds))):
                pass
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to the database {self.name}: {_first_line(exc)}") from exc

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
    def reading(self) -> Iterator[PostgresConnection]:
        try:
            with self._connections().connection() as conn:
                yield PostgresConnection(conn)
        except psycopg.OperationalError as exc:
            raise _translate_postgres(exc) from exc

    @contextmanager
    def writing(self) -> Iterator[PostgresConnection]:
        """One transaction; PostgreSQL locks rows as they are written, and lock_model_type serialises promotions."""
        try:
            with self._connections().connection() as conn, conn.transaction():
                yield PostgresConnection(conn)
        except psycopg.OperationalError as exc:
            raise _translate_postgres(exc) from exc

    @contextmanager
    def migrating(self) -> Iterator[PostgresConnection]:
        """A transaction for one migration, taken in turns: replicas starting together each wait for the
        advisory lock, then find what the first one applied. PostgreSQL's DDL is transactional."""
        try:
            with self.writing() as conn:
                conn.execute("SELECT set_config('lock_timeout', '60s', true)")
                conn.execute("SELECT pg_advisory_xact_lock(?::integer, 0)", (_MIGRATION_LOCK,))
                yield conn
        except psycopg.Error as exc:
            raise StorageError(_first_line(exc)) from exc

    def lock_model_type(self, conn: Connection, model_type: str) -> None:
        """Serialises every change of one model type's current set across hosts until the transaction ends.

        Without it, two replicas promoting at once would both read the old current row, and the second
        commit would break the unique index instead of demoting the first one's set.
        """
        conn.execute("SELECT pg_advisory_xact_lock(?::integer, hashtext(?))", (_MODEL_TYPE_LOCK, model_type))

    def announce_change(self, conn: Connection, model_type: str) -> None:
        """NOTIFY, delivered to every listening replica when (and only if) the transaction commits."""
        conn.execute("SELECT pg_notify(?, ?)", (CHANGES_CHANNEL, model_type))

    def change_feed(self) -> PostgresChangeFeed:
        return PostgresChangeFeed(self.url)


class PostgresConnection:
    """A psycopg connection that takes the repositories' qmark statements (psycopg itself wants %s)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self.conn.execute(_format_placeholders(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(_format_placeholders(sql), [tuple(p) for p in parameters])


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
