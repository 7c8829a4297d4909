"""Numbered SQL migrations: found on disk, applied in order, each in one transaction with its record.

db/migrations/NNNN_what_it_does.sql is written once for both dialects; a migration whose SQL differs between
them has a file of the same number and name in db/migrations/sqlite/ and in db/migrations/postgresql/ instead.
The database only lends a transaction (`migrating()`); which statements run, in which order, and how an applied
migration is recorded are decided here, once for both dialects.
A migration whose work SQL cannot express also has a data step (DATA_STEPS), run after its statements
in the same transaction.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from predserve.server import failpoints
from predserve.server.errors import PredserveError, StorageError
from predserve.server.storage.databases import Connection, RegistryDatabase
from predserve.server.storage.history import copy_history

logger = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# By migration name, for both dialects: what runs after its statements, on the same connection and transaction.
DATA_STEPS: dict[str, Callable[[Connection], None]] = {
    "add_data_segments": copy_history,  # float64 bytes from the JSON rows already there
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    data_step: Callable[[Connection], None] | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def discover_migrations(directory: Path) -> list[Migration]:
    """The numbered migrations in a directory, in order."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if not match:
            raise StorageError(f"migration file name {path.name!r} is not NNNN_what_it_does.sql")
        name = match.group(2)
        migrations.append(Migration(int(match.group(1)), name, path.read_text(), DATA_STEPS.get(name)))
    return migrations


def migrations_for(database: RegistryDatabase, directory: Path) -> list[Migration]:
    """The migrations of the database's dialect: those both dialects share, and its own."""
    return dialect_migrations(directory, database.migrations_subdir)


def dialect_migrations(directory: Path, dialect: str) -> list[Migration]:
    """The shared migrations of `directory` and those of its `dialect` folder, in order; a number in both is
    refused: a migration is written once for both dialects, or once for each."""
    shared = {m.version: m for m in discover_migrations(directory)}
    own = {m.version: m for m in discover_migrations(directory / dialect)}
    twice = sorted(shared.keys() & own.keys())
    if twice:
        raise StorageError(f"migration(s) {twice} are both shared and written for {dialect}: keep one of them")
    return sorted([*shared.values(), *own.values()], key=lambda m: m.version)


class MigrationRunner:
    """Applies numbered migrations in order, each in one transaction with the record of it."""

    def __init__(self, database: RegistryDatabase) -> None:
        self.database = database

    def applied_versions(self) -> set[int]:
        with self.database.migrating() as conn:
            self._ensure_bookkeeping(conn)
            return {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}

    def apply(self, migrations: Sequence[Migration]) -> list[Migration]:
        return [migration for migration in migrations if self._apply_one(migration)]

    def _apply_one(self, migration: Migration) -> bool:
        try:
            with self.database.migrating() as conn:
                self._ensure_bookkeeping(conn)
                applied = conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,))
                if applied.fetchone():
                    return False
                for index, statement in enumerate(statements(migration.sql)):
                    if index:
                        # Between two statements, inside the transaction: a crash here must leave no trace.
                        failpoints.reach(failpoints.MID_MIGRATION)
                    conn.execute(statement)
                if migration.data_step is not None:
                    migration.data_step(conn)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (migration.version, migration.name)
                )
        except PredserveError as exc:
            raise StorageError(f"migration {migration.label} failed: {exc}") from exc
        logger.info("applied migration %s", migration.label)
        return True

    def _ensure_bookkeeping(self, conn: Connection) -> None:
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    INTEGER PRIMARY KEY,
                   name       TEXT NOT NULL,
                   applied_at {self.database.timestamp_type} NOT NULL DEFAULT ({self.database.now_sql})
               )"""
        )


def statements(script: str) -> Iterator[str]:
    """Each complete statement of a script, in order; the migrations hold no procedural code, so a
    statement ends at a semicolon outside quotes and comments, in both dialects."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip() and not _only_comments(pending):
        raise StorageError(f"incomplete SQL statement at the end of a migration: {pending.strip()[:80]}")


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())
