"""What the repositories and the migration runner need of a database, and the choice of one from --db.

Two adapters implement it: SqliteDatabase (server/storage/sqlite.py), the embedded default, and
PostgresDatabase (server/storage/postgres.py), the registry several replicas share. The repositories'
statements are written once, with qmark placeholders, in SQL that both accept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from predserve.server.storage.postgres import DEFAULT_POOL_SIZE, PostgresDatabase
from predserve.server.storage.postgres_liveness import DEFAULT_REGISTRY_TIMEOUT_SECONDS
from predserve.server.storage.sqlite import SqliteDatabase
from predserve.server.storage.urls import postgres_url


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the repositories use of a connection: sqlite3.Connection, or the PostgreSQL wrapper."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


class ChangeFeed(Protocol):
    def wait(self, timeout: float) -> bool:
        """Blocks until another process announces a change (True) or the timeout passes (False)."""
        ...

    def close(self) -> None: ...


class RegistryDatabase(Protocol):
    """The registry the repositories and the migration runner work on."""

    # SQL for "now" in the format the database stores timestamps in, and the column type that holds it.
    now_sql: str
    timestamp_type: str
    # Where this dialect's migrations sit, relative to db/migrations ("" for the SQLite ones).
    migrations_subdir: str

    @property
    def name(self) -> str: ...

    def prepare(self, check_integrity: bool = True) -> None: ...

    def close(self) -> None: ...

    def reading(self) -> AbstractContextManager[Connection]: ...

    def snapshot(self) -> AbstractContextManager[Connection]:
        """Several reads that see one committed state."""
        ...

    def writing(self, commit_by: float | None = None) -> AbstractContextManager[Connection]:
        """One transaction; with `commit_by` (time.monotonic()), committed only before then, else rolled back
        with Cancelled."""
        ...

    def changing_sets(self, commit_by: float | None = None) -> AbstractContextManager[Connection]:
        """A transaction that records, promotes or archives prediction sets: `writing`, committed by `commit_by`
        and, on a registry a frozen server can hold (PostgreSQL), within --registry-timeout of its start, so that
        a change whose caller was told it failed never takes effect later."""
        ...

    def migrating(self) -> AbstractContextManager[Connection]: ...

    def lock_model_type(self, conn: Connection, model_type: str) -> None: ...

    def lock_dataset(self, conn: Connection, dataset: str) -> None: ...

    def timestamp_parameter(self, moment: dt.datetime) -> Any:
        """A time as a statement compares it with a timestamp column of this database."""
        ...

    def announce_change(self, conn: Connection, model_type: str) -> None: ...

    def change_feed(self) -> ChangeFeed | None: ...


def open_database(
    location: str | Path,
    busy_timeout_seconds: float = 5.0,
    pool_size: int = DEFAULT_POOL_SIZE,
    registry_timeout_seconds: float = DEFAULT_REGISTRY_TIMEOUT_SECONDS,
) -> SqliteDatabase | PostgresDatabase:
    """The registry a --db value names: a PostgreSQL URL, or else the path of a SQLite file. Any other URL
    raises DatabaseLocationError (parse_config refuses it first): it must never become a file."""
    url = postgres_url(location) if isinstance(location, str) else None
    if url is not None:
        return PostgresDatabase(url, busy_timeout_seconds, pool_size, registry_timeout_seconds)
    return SqliteDatabase(Path(location), busy_timeout_seconds)
