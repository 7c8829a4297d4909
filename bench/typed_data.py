"""Typed data at scale: ingest of a CSV with strings and empty cells, and Train's load of it into a DataFrame.

    python -m bench.typed_data [--rows 1000000] [--repeats 3]

1. ingest: `predserve ingest --csv` end to end against a real server on a fresh SQLite database (bench/ingest.py's
   `throughput`), once for a typed file (5 number and 3 string columns, 5 % of the cells empty) and once for an
   all-number file of the same rows and width, the path every release had: the target is typed >= 1x numbers;
2. data load: what Train does with the typed dataset before it fits, read from its Arrow segments into the
   pandas DataFrame the pipeline fits on, in rows per second: the target is >= 1M rows/s.
`make bench` runs both at 1M rows; the figures land in its results beside the serving scenarios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import ingest

NUMBERS = ("age", "income", "tenure", "visits", "spend")
STRINGS = ("plan", "country", "channel")
EMPTY_SHARE = 0.05
TYPED_DATASET = ingest.DATASET


def _typed_frame(rows: int, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "income": rng.normal(50_000, 15_000, rows).round(2),
            "tenure": rng.integers(0, 120, rows).astype(float),
            "visits": rng.poisson(4, rows).astype(float),
            "spend": rng.gamma(2.0, 40.0, rows).round(2),
            "plan": rng.choice(["basic", "pro", "team", "enterprise"], rows),
            "country": rng.choice(["fr", "de", "us", "jp", "br", "in"], rows),
            "channel": rng.choice(["web", "store", "phone"], rows),
        }
    )
    frame["label"] = ((frame["plan"] == "basic") & (frame["age"] > 40) | (frame["visits"] < 2)).astype(int)
    for name in (*NUMBERS, *STRINGS):
        frame.loc[rng.random(rows) < EMPTY_SHARE, name] = None
    return frame


def write_typed_csv(path: Path, rows: int, seed: int = 23) -> None:
    """5 number and 3 string columns and a 0/1 label; 5 % of the feature cells empty, at random."""
    _typed_frame(rows, seed).to_csv(path, index=False)


def write_number_csv(path: Path, rows: int) -> None:
    """The same rows and width, all numbers and none missing: the file every release has ingested."""
    ingest.write_csv(path, rows, len(NUMBERS) + len(STRINGS))


def ingest_figures(workdir: Path, rows: int) -> dict[str, Any]:
    """`predserve ingest --csv` of both files, each on a fresh server: rows/s and CPU per row of each side."""
    typed_csv, number_csv = workdir / "typed.csv", workdir / "numbers.csv"
    write_typed_csv(typed_csv, rows)
    write_number_csv(number_csv, rows)
    figures = {
        "numbers": ingest.throughput(workdir / "numbers", number_csv, rows),
        "typed": ingest.throughput(workdir / "typed", typed_csv, rows),
    }
    typed_csv.unlink()
    number_csv.unlink()
    return figures


def data_load_figures(workdir: Path, rows: int, repeats: int) -> dict[str, Any]:
    """Train's load of the typed dataset into its DataFrame, in process (no fit): rows/s of the best run."""
    from predserve.server.app import build_services
    from predserve.server.config import ServerConfig
    from predserve.server.services.training import TrainCommand

    typed_csv = workdir / "load.csv"
    write_typed_csv(typed_csv, rows)
    server_dir = workdir / "load"
    ingest.throughput(server_dir, typed_csv, rows)  # stores it the way a user does: the CLI and a real server
    typed_csv.unlink()
    services = build_services(ServerConfig(db_path=server_dir / "throughput" / "predictions.db",
                                           models_dir=server_dir / "throughput" / "models"))  # fmt: skip
    try:
        command = TrainCommand(model_type="bench_typed", algorithm="logistic_regression", dataset=TYPED_DATASET)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            data = services.training._training_data(command)  # what Train reads before it fits, checks included
            seconds.append(time.perf_counter() - started)
        frame: Any = data.features
        if len(frame) != rows or list(frame.columns) != [*NUMBERS, *STRINGS]:
            raise RuntimeError(f"the typed dataset loaded as {frame.shape}, columns {list(frame.columns)}")
        dtypes = {name: str(dtype) for name, dtype in frame.dtypes.items()}
    finally:
        services.database.close()
    best = min(seconds)
    return {
        "rows": rows,
        "best_s": round(best, 3),
        "median_s": round(statistics.median(seconds), 3),
        "rows_per_second": round(rows / best),
        "dtypes": dtypes,
    }


def measure(rows: int, repeats: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="predserve-bench-typed-"))
    try:
        return {
            "rows": rows,
            "ingest": ingest_figures(workdir, rows),
            "data_load": data_load_figures(workdir, rows, repeats),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.typed_data", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.rows, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
