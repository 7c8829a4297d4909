"""What the start-up integrity check costs: PRAGMA quick_check on a registry with many history rows.

Usage: python -m bench.integrity_check [--rows N]. Prints the file size and the check's time (warm cache).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from predserve.server.settings import MIGRATIONS_DIR
from predserve.server.storage.migrations import MigrationRunner, migrations_for
from predserve.server.storage.sqlite import SqliteDatabase


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.integrity_check", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="data_history rows of 10 features")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "registry.db"
        database = SqliteDatabase(path)
        database.prepare()
        MigrationRunner(database).apply(migrations_for(database, MIGRATIONS_DIR))
        features = json.dumps([0.123456789] * 10)
        with sqlite3.connect(path) as conn:
            conn.executemany(
                "INSERT INTO data_history (dataset, features, target) VALUES ('d', ?, '1')",
                ((features,) for _ in range(args.rows)),
            )
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        mebibytes = path.stat().st_size / 2**20
        for _ in range(3):
            started = time.perf_counter()
            database.prepare(check_integrity=True)
            seconds = time.perf_counter() - started
            rate = mebibytes / seconds
            print(f"{args.rows} rows, {mebibytes:.0f} MiB: start-up check {seconds:.2f} s ({rate:.0f} MiB/s)")


if __name__ == "__main__":
    main()
