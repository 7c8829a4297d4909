"""How fast Train reads a dataset: from its binary copy (data_segments) and from its JSON rows (data_history).

Ingests ROWS x FEATURES random rows into a fresh SQLite registry (or a throw-away PostgreSQL one), then times
the data load Train does before it fits, both ways, and its peak of traced memory against the matrix's size:

    python -m bench.training_data [--rows 100000] [--features 10] [--repeats 3] [--postgres] [--train]

The JSON way is measured on the same rows, with the binary copy removed: what Train did before it existed,
and what it still does for rows its copy does not cover. --train also times one whole LogisticRegression Train.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from predserve.server.app import Services, build_services
from predserve.server.domain import HistoryRow
from predserve.server.services.training import TrainCommand
from predserve.server.settings import ServerConfig
from tests.postgres_cluster import PostgresCluster, find_bindir

DATASET = "bench"
INGEST_BATCH = 100_000
TRAIN = TrainCommand(model_type="bench_model", algorithm="logistic_regression", dataset=DATASET)


def ingest(services: Services, rows: int, features: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    for start in range(0, rows, INGEST_BATCH):
        matrix = rng.normal(size=(min(INGEST_BATCH, rows - start), features))
        targets = (matrix[:, 0] + 0.5 * matrix[:, 1] > 0).astype(int).tolist()
        batch = [HistoryRow(tuple(row), target) for row, target in zip(matrix.tolist(), targets, strict=True)]
        services.history.ingest(DATASET, [f"x{i}" for i in range(features)], batch)


def data_load(services: Services) -> Callable[[], object]:
    """What Train does with the ingested dataset before it fits: read it into its matrix and check it."""
    return lambda: services.training._training_data(TRAIN)


def timed(work: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return seconds


def peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(services: Services, label: str, rows: int, features: int, repeats: int, train: bool) -> None:
    load = data_load(services)
    seconds = timed(load, repeats)
    matrix_bytes = rows * features * 8
    peak = peak_bytes(load)
    best = min(seconds)
    print(
        f"{label:>12}: {rows / best:>12,.0f} rows/s (best of {repeats}: {best:.3f} s, median "
        f"{statistics.median(seconds):.3f} s); peak traced memory {peak / 2**20:,.1f} MiB = "
        f"{peak / matrix_bytes:.2f}x the matrix ({matrix_bytes / 2**20:,.1f} MiB)"
    )
    if train:
        (train_seconds,) = timed(lambda: services.training.train(TRAIN), 1)
        print(f"{'':>12}  one LogisticRegression Train: {train_seconds:.3f} s")


@contextlib.contextmanager
def registry(root: Path, postgres: bool) -> Iterator[str]:
    if not postgres:
        yield str(root / "bench.db")
        return
    bindir = find_bindir()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (no initdb found)")
    cluster = PostgresCluster(bindir).start()
    try:
        yield cluster.create_database()
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.training_data", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="a throw-away PostgreSQL registry, not SQLite")
    parser.add_argument("--train", action="store_true", help="also time one whole Train each way")
    parser.add_argument("--skip-json", action="store_true", help="only the binary copy (the JSON way is slow)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="predserve-bench-training-data-"))
    with registry(root, args.postgres) as db:
        config = ServerConfig(db_path=root / "bench.db", models_dir=root / "models")
        if args.postgres:
            config = ServerConfig(database_url=db, models_dir=root / "models")
        services = build_services(config)
        try:
            started = time.perf_counter()
            ingest(services, args.rows, args.features)
            ingest_seconds = time.perf_counter() - started
            print(
                f"{'sqlite' if not args.postgres else 'postgresql'}: {args.rows:,} rows x {args.features} features "
                f"ingested in {ingest_seconds:.2f} s ({args.rows / ingest_seconds:,.0f} rows/s)"
            )
            measure(services, "binary copy", args.rows, args.features, args.repeats, args.train)
            if not args.skip_json:
                drop_binary_copy(services)
                measure(services, "JSON rows", args.rows, args.features, args.repeats, args.train)
        finally:
            services.database.close()
    return 0


def drop_binary_copy(services: Services) -> None:
    with services.database.writing() as conn:
        conn.execute("DELETE FROM data_segments WHERE dataset = ?", (DATASET,))


if __name__ == "__main__":
    sys.exit(main())
