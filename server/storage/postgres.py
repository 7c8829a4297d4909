"""The registry several replicas share: a PostgreSQL database, its connection pool and its change feed.

Connections come from a psycopg_pool pool, dropped whole as soon as one of its connections is found dead
and opened again by the first call that manages a connection of its own: psycopg_pool's own reconnection
backs off exponentially (to over 30 s after a long outage), which would keep failing calls long after the
database returns. A change of the current set is serialised per model type
by a transaction-scoped advisory lock (the partial unique index stays the arbiter), and every change
is announced with NOTIFY so that the other replicas reload at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from predserve.server.errors import Cancelled, DatabaseUnreachable, ResourceExhausted, StorageError, Unavailable
from predserve.server.storage.postgres_feed import CHANGES_CHANNEL, PostgresChangeFeed
from predserve.server.storage.postgres_liveness import (
    DEFAULT_REGISTRY_TIMEOUT_SECONDS,
    LATE_COMMIT,
    STATEMENT_TIMEOUT_SECONDS,
    CallGuard,
    answers,
    bound_by,
    connect_options,
    probe_target,
)
from predserve.server.storage.urls import first_line, redact_url, scrub

if TYPE_CHECKING:
    from predserve.server.storage.databases import Connection

logger = logging.getLogger(__name__)

# Advisory lock keys (two int4 keys: a namespace, then a value), chosen not to meet other applications' keys.
_MODEL_TYPE_LOCK = int.from_bytes(b"pred", "big")
_MIGRATION_LOCK = int.from_bytes(b"migr", "big")
_DATASET_LOCK = int.from_bytes(b"data", "big")
# Pooled connections one serving process may hold (--db-pool-size); it holds one more to LISTEN.
DEFAULT_POOL_SIZE = 4
# SQLSTATE 53300 (too_many_connections), which libpq's connection errors report only in their text.
_NO_SLOT_TEXTS = ("too many clients already", "remaining connection slots are reserved")


class PostgresDatabase:
    """A pool of connections to one PostgreSQL database, shared by every replica.

    The pool belongs to one process: close() it before a fork, and the child opens its own on first use.
    """

    now_sql = "now()"
    timestamp_type = "TIMESTAMPTZ"
    migrations_subdir = "postgresql"

    def __init__(
        self,
        url: str,
        busy_timeout_seconds: float = 5.0,
        pool_size: int = DEFAULT_POOL_SIZE,
        registry_timeout_seconds: float = DEFAULT_REGISTRY_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self.busy_timeout_seconds = busy_timeout_seconds
        self.pool_size = pool_size
        self.registry_timeout_seconds = registry_timeout_seconds
        # None until the first call, and again from the moment a connection is found dead until one succeeds.
        self._pool: ConnectionPool | None = None
        self._unreachable = False  # so that an outage is logged once, and its end once
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
            if _no_free_slot(exc):
                raise StorageError(self._no_slot_message()) from exc
            message = scrub(first_line(exc), self.url)
            raise DatabaseUnreachable(f"cannot connect to the database {self.name}: {message}") from exc

    def _no_slot_message(self) -> str:
        return (
            f"the registry database {self.name} has no free connection slot (max_connections reached): raise "
            f"max_connections or lower --db-pool-size (each serving process uses up to {self.pool_size + 1})"
        )

    def _unreachable_error(self, exc: Exception) -> Unavailable:
        if _no_free_slot(exc):
            return Unavailable(self._no_slot_message())
        message = scrub(first_line(exc), self.url)
        return Unavailable(f"the registry database {self.name} cannot be reached: {message}")

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.close()
            self._pool = None

    def _connections(self) -> ConnectionPool:
        """This process's pool; when there is none, a new one, once a connection of our own proves it can work.

        The proof is made outside the lock, so that a refused connection fails this call alone, at once.
        """
        with self._pool_lock:
            if self._pool is not None and self._pool_pid != os.getpid():
                self._inherited.append(self._pool)
                self._pool = None
            if self._pool is not None:
                return self._pool
        self._prove_reachable()
        with self._pool_lock:
            if self._pool is None:
                # min_size=1: one warm connection for the live reload's tick and the next call; the rest are
                # opened under load and closed after a minute idle, so an idle process holds 1 + 1 LISTEN.
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    max_idle=60.0,
                    kwargs={
                        "autocommit": True,
                        "application_name": "predserve",
                        "row_factory": _row_factory,
                        **connect_options(self.registry_timeout_seconds),
                    },
                    configure=self._configure,
                    # Waiting for a free connection is bounded like any other wait on the registry.
                    timeout=min(self.busy_timeout_seconds, self.registry_timeout_seconds),
                    name="predserve",
                    open=True,
                )
                self._pool_pid = os.getpid()
            return self._pool

    def _prove_reachable(self) -> None:
        # First the quick question every PostgreSQL answers before authentication: a frozen server is found in a
        # fraction of the registry timeout, where libpq's connect_timeout cannot be under 2 s.
        target = probe_target(self.url)
        if target is not None and not answers(*target, self.registry_timeout_seconds / 4):
            raise self._unreachable_error(
                psycopg.OperationalError(f"no answer within {self.registry_timeout_seconds / 4:g}s")
            )
        try:
            with psycopg.connect(
                self.url, application_name="predserve", **connect_options(self.registry_timeout_seconds)
            ):
                pass
        except psycopg.Error as exc:
            raise self._unreachable_error(exc) from exc
        if self._unreachable:
            self._unreachable = False
            logger.info("the registry database %s can be reached again", self.name)

    def _drop(self, pool: ConnectionPool, exc: Exception) -> None:
        """Forgets a pool with a dead connection: the server went away, so its other connections are dead too,
        and its reconnection would back off for longer and longer. The next call starts a new one."""
        with self._pool_lock:
            if self._pool is not pool:
                return  # another call dropped it already
            self._pool = None
            first = not self._unreachable
            self._unreachable = True
        if first:
            logger.warning(
                "the registry database %s cannot be reached (%s): calls that need it fail with UNAVAILABLE "
                "until a new connection succeeds",
                self.name,
                scrub(first_line(exc), self.url),
            )
        # Closing waits for the pool's threads, which may be in a connect: never in the caller's time.
        threading.Thread(target=pool.close, name="predserve-pool-close", daemon=True).start()

    def _checkout(self, deadline: float | None) -> tuple[ConnectionPool, psycopg.Connection[Any], CallGuard]:
        """A working connection with its guard on, or UNAVAILABLE at once when the database cannot be reached."""
        failure: Exception = PoolClosed("the pool was closed")
        for _ in range(2):  # a dead pool is dropped once, then a new one tried
            pool = self._connections()
            try:
                conn = pool.getconn()
            except PoolClosed as exc:  # dropped by another call meanwhile
                failure = exc
                continue
            except PoolTimeout as exc:
                try:
                    self._prove_reachable()
                except Unavailable:
                    self._drop(pool, exc)
                    raise
                raise Unavailable(
                    f"the registry database {self.name} is busy: no free connection among this process's "
                    f"{self.pool_size} (--db-pool-size) after {self.busy_timeout_seconds:g}s"
                ) from exc
            guard = CallGuard(conn, self.registry_timeout_seconds, deadline).__enter__()
            try:
                # One round trip (an empty query): a connection the server closed while it sat idle fails
                # here, before any statement of the caller ran on it; one to a frozen server is cut.
                conn.execute("")
            except psycopg.Error as exc:
                guard.__exit__()
                failure = self._cut_error(guard, exc)
                self._drop(pool, exc)
                pool.putconn(conn)
                if guard.cut_reason is not None:
                    raise failure from exc  # frozen: another connection would only wait as long
                continue
            return pool, conn, guard
        raise self._unreachable_error(failure) from failure

    def _cut_error(self, guard: CallGuard, exc: Exception) -> Exception:
        if guard.cut_reason is None:
            return exc
        return Unavailable(f"the registry database {self.name} cannot be reached: {guard.cut_reason}")

    @contextmanager
    def _connection(self, deadline: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one call, watched by a CallGuard (postgres_liveness.py) until it is put back."""
        pool, conn, guard = self._checkout(deadline)
        try:
            yield conn
        except psycopg.OperationalError as exc:
            if conn.broken or conn.closed:
                self._drop(pool, exc)
            cut = self._cut_error(guard, exc)
            if cut is not exc:
                raise cut from exc
            raise
        finally:
            guard.__exit__()
            pool.putconn(conn)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # SQLite's busy timeout, here: a write waiting longer than this for a lock fails as UNAVAILABLE.
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self.busy_timeout_seconds * 1000)}ms",))
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{STATEMENT_TIMEOUT_SECONDS}s",))

    @contextmanager
    def reading(self) -> Iterator[PostgresConnection]:
        try:
            with self._connection() as conn:
                yield PostgresConnection(conn)
        except psycopg.OperationalError as exc:
            raise _translate_postgres(exc, self.url, self.name) from exc

    @contextmanager
    def snapshot(self) -> Iterator[PostgresConnection]:
        """Reads that all see the same committed state: one REPEATABLE READ, READ ONLY transaction."""
        try:
            with self._connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield PostgresConnection(conn)
        except psycopg.OperationalError as exc:
            raise _translate_postgres(exc, self.url, self.name) from exc

    @contextmanager
    def writing(self, commit_by: float | None = None) -> Iterator[PostgresConnection]:
        """One transaction; PostgreSQL locks rows as they are written, and lock_model_type serialises promotions.

        With `commit_by` (time.monotonic()), the transaction commits only before then: each statement and lock
        wait is bounded by the time left, the connection is cut when it passes, and PostgreSQL itself refuses
        the COMMIT once its clock is past it (migration 0011's deferred trigger on prediction_sets), so that a
        server frozen during the commit and resumed later records nothing for a caller who was told it failed.
        """
        try:
            with self._connection(commit_by) as conn, conn.transaction():
                if commit_by is not None:
                    bound_by(conn, commit_by, self.busy_timeout_seconds)
                yield PostgresConnection(conn)
        except psycopg.errors.RaiseException as exc:
            if LATE_COMMIT not in str(exc):
                raise
            raise Cancelled("the caller's deadline passed before PostgreSQL committed; nothing was recorded") from exc
        except psycopg.OperationalError as exc:
            raise _translate_postgres(exc, self.url, self.name) from exc

    def changing_sets(self, commit_by: float | None = None) -> AbstractContextManager[PostgresConnection]:
        bound = time.monotonic() + self.registry_timeout_seconds
        return self.writing(bound if commit_by is None else min(commit_by, bound))

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
            raise StorageError(scrub(first_line(exc), self.url)) from exc

    def lock_model_type(self, conn: Connection, model_type: str) -> None:
        """Serialises every change of one model type's current set across hosts until the transaction ends.

        Without it, two replicas promoting at once would both read the old current row, and the second
        commit would break the unique index instead of demoting the first one's set.
        """
        conn.execute("SELECT pg_advisory_xact_lock(?::integer, hashtext(?))", (_MODEL_TYPE_LOCK, model_type))

    def lock_dataset(self, conn: Connection, dataset: str) -> None:
        """Serialises appends to one dataset until the transaction ends, so that its rows take ids in the
        order its batches commit, the order its binary copy keeps them in (server/storage/history.py)."""
        conn.execute("SELECT pg_advisory_xact_lock(?::integer, hashtext(?))", (_DATASET_LOCK, dataset))

    @staticmethod
    def timestamp_parameter(moment: dt.datetime) -> dt.datetime:
        """timestamptz takes the time itself, to the microsecond."""
        return moment

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


_POSTGRES_BUSY = (
    psycopg.errors.LockNotAvailable,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.QueryCanceled,
)


def _no_free_slot(exc: Exception) -> bool:
    return getattr(exc, "sqlstate", None) == "53300" or any(text in str(exc) for text in _NO_SLOT_TEXTS)


def _translate_postgres(exc: psycopg.OperationalError, url: str = "", name: str = "") -> Exception:
    message = scrub(first_line(exc), url)
    if isinstance(exc, psycopg.errors.DiskFull):
        return ResourceExhausted(f"no space left in the database: {message}")
    if isinstance(exc, _POSTGRES_BUSY):
        return Unavailable(f"the database is busy (another writer holds its lock): {message}")
    # A connection refused, dropped or timed out, a database shutting down: another try may well work.
    return Unavailable(f"the registry database {name} cannot be reached: {message}")
