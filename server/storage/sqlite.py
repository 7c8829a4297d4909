"""The embedded registry: one SQLite file, and the lifetime of its connections.

A connection is opened per unit of work (SQLite connections are cheap, and this keeps them out of
the way of gRPC's worker threads), and writes take the lock up front (BEGIN IMMEDIATE) so that a
read-then-write never deadlocks against another writer.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from predserve.server.errors import Cancelled, DataLoss, ResourceExhausted, StorageError, Unavailable
from predserve.server.storage.permissions import warn_if_others_can_write

logger = logging.getLogger(__name__)


class SqliteDatabase:
    """Opens configured connections to one SQLite file."""

    now_sql = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    timestamp_type = "TEXT"
    migrations_subdir = "sqlite"

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
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _translate(exc, self.path) from exc
        return conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, self.path) from exc
        finally:
            conn.close()

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Reads that all see the same committed state: one read transaction (WAL keeps writers going)."""
        with self.reading() as conn:
            conn.execute("BEGIN DEFERRED")
            try:
                yield conn
            finally:
                _roll_back(conn)

    @contextmanager
    def writing(self, commit_by: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction that holds the write lock from its first statement; with `commit_by`
        (time.monotonic()), rolled back instead of committed once it has passed."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if commit_by is not None and time.monotonic() > commit_by:
                    raise Cancelled("the caller's deadline passed before the commit; nothing was recorded")
            except BaseException:
                _roll_back(conn)
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, self.path) from exc
        finally:
            conn.close()

    def changing_sets(self, commit_by: float | None = None) -> AbstractContextManager[sqlite3.Connection]:
        """`writing`: the file is on this host's disk, which stalls only with the server itself."""
        return self.writing(commit_by)

    @contextmanager
    def migrating(self) -> Iterator[sqlite3.Connection]:
        """A write transaction for one migration: SQLite's DDL is transactional, and the lock serialises migrators."""
        try:
            with self.writing() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def prepare(self, check_integrity: bool = True) -> None:
        """Creates a missing database file owner-only, refuses a corrupted one, and turns on WAL; SQLite
        gives its -wal and -shm files the same mode.

        Whoever can write this file chooses which artifact the server unpickles, so an existing file
        that others may write is reported.
        """
        existed = self._create_owner_only()
        if existed and check_integrity:
            self._check_integrity()
        with self.reading() as conn:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            logger.warning("database %s stays in journal mode %s, not WAL", self.path, mode)

    def _create_owner_only(self) -> bool:
        """Whether the file was already there."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return False
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot create database {self.path}: {exc.strerror}") from exc
        warn_if_others_can_write(
            self.path, "database", "they can choose which artifact the server loads", "chmod 600 it"
        )
        return True

    def _check_integrity(self) -> None:
        """PRAGMA quick_check reads every page: a damaged one found now stops start-up with one line,
        instead of failing Trains later. (It skips integrity_check's index-content comparison, which
        costs several times more and finds what a crash cannot cause.)"""
        with self.reading() as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise DataLoss(
                f"database {self.path} is corrupted ({problems[0]}"
                f"{f'; {len(problems) - 1} more problem(s)' if len(problems) > 1 else ''}): restore it from a backup"
            )

    def close(self) -> None:
        """Nothing to release: every unit of work opens and closes its own connection."""

    def lock_model_type(self, conn: Any, model_type: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the one write lock of the whole file."""

    def lock_dataset(self, conn: Any, dataset: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the one write lock of the whole file."""

    @staticmethod
    def timestamp_parameter(moment: dt.datetime) -> str:
        """A time as the created_at column holds it (ISO-8601 text, UTC, milliseconds), so that text compares
        as time does; truncated to the millisecond, which keeps `created_at > ?` exact at that resolution."""
        utc = moment.astimezone(dt.UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"

    def announce_change(self, conn: Any, model_type: str) -> None:
        """Nothing to do: SQLite cannot signal other processes; they poll (see LiveReloader)."""

    def change_feed(self) -> None:
        return None


def _roll_back(conn: sqlite3.Connection) -> None:
    """Rolls back unless SQLite already has (it does on a full disk or an I/O error); a failing
    ROLLBACK would otherwise hide the error that caused it."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


# What SQLite says of a file whose pages are damaged or that is not a database at all.
_CORRUPTION = ("malformed", "not a database", "database corruption")


def _translate(exc: sqlite3.DatabaseError, path: Path) -> Exception:
    message = str(exc)
    if any(sign in message for sign in _CORRUPTION):
        return DataLoss(f"database {path} is corrupted ({message}): restore it from a backup")
    if "disk is full" in message:
        return ResourceExhausted(f"no space left in the database: {message}")
    if "locked" in message or "busy" in message:
        return Unavailable(f"the database is busy (another writer holds its lock): {message}")
    if "readonly" in message or "read-only" in message:
        return StorageError(f"the database is read-only: {message}")
    return StorageError(f"database error: {message}")
