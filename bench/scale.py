"""make bench-scale: how each cost grows with history, as ratios of a large registry against a small one.

Registries are populated in process through predserve's own services (the same Train and registration a
server runs; a fit of iris takes milliseconds), then served by a real server process and timed through gRPC.
Every figure is a median over repeated calls in the same run; a ratio compares the large case with the small
one measured minutes apart on the same machine. The costs that grow with a dataset's rows (Train's data load,
a whole Train less its fit, an ingest through the CLI) are measured at several sizes, as seconds per row: a
curve, tabled as each size against the first. Printed as a table and written to bench/results/scale.md,
scale.json and scale.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ingest as ingest_bench
from bench import training_data
from bench.report import pyplot
from bench.run import machine
from harness.launcher import ServerProcess
from harness.ports import free_port
from harness.waiting import wait_until
from predserve.client.library import PredserveClient

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
FEATURES = 10  # issue 17's rates are for rows of 10 features
LOAD_REPEATS = 3
LOAD_TARGET_RATE = 1_000_000  # rows/s of Train's data load, issue 17 item 3
TRAIN_TIMEOUT_SECONDS = 900.0
MIN_ROWS = 100


@dataclass(frozen=True)
class Sizes:
    small_types: int = 10
    large_types: int = 1000
    small_sets: int = 100
    large_sets: int = 10_000
    calls: int = 200
    startups: int = 3  # timed per registry
    data_rows: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    ingest_rows: tuple[int, ...] = (100_000, 1_000_000)


@dataclass
class Figure:
    name: str
    small: float  # seconds (or seconds per unit, as `unit` says)
    large: float
    unit: str
    limit: float | None  # the target's bound on large / small, None where the issue sets none
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.large / self.small if self.small else float("inf")

    def row(self) -> dict[str, Any]:
        met = "-" if self.limit is None else ("PASS" if self.ratio <= self.limit else "**MISS**")
        return {
            "cost": self.name,
            "small": _shown(self.small, self.unit),
            "large": _shown(self.large, self.unit),
            "ratio": round(self.ratio, 3),
            "limit": "report" if self.limit is None else f"<= {self.limit}",
            "met": met,
            "note": self.note,
        }


@dataclass(frozen=True)
class Curve:
    """One cost in seconds per row at several row counts: a line of the plot's log-log panel, and in the
    table one Figure for each count against the first."""

    label: str
    per_row: dict[int, float]  # rows -> seconds per row
    limit: float | None
    target_rate: float | None = None  # rows/s the issue asks for, judged at each size after the first
    note: str = ""

    def figures(self) -> list[Figure]:
        (first, base), *rest = sorted(self.per_row.items())
        return [
            Figure(
                f"{self.label} per row, {_rows(first)} vs {_rows(rows)} rows",
                base,
                value,
                " / row",
                self.limit,
                self._note(base, value, rows),
            )
            for rows, value in rest
        ]

    def _note(self, small: float, large: float, rows: int) -> str:
        rates = f"{1 / small:,.0f} vs {1 / large:,.0f} rows/s"
        if self.target_rate is not None:
            met = "met" if 1 / large >= self.target_rate else "MISSED"
            rates += f" (target >= {self.target_rate:,.0f} at {_rows(rows)}: {met})"
        return "; ".join(part for part in (rates, self.note) if part)

    def points(self) -> dict[str, Any]:
        rows = sorted(self.per_row)
        return {
            "cost": self.label,
            "rows": rows,
            "seconds_per_row": [self.per_row[count] for count in rows],
            "target_rate": self.target_rate,
        }


def _shown(value: float, unit: str) -> str:
    for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ")):
        if value >= scale:
            return f"{value / scale:.3f} {prefix}s{unit}"
    return f"{value * 1e9:.3f} ns{unit}"


def _rows(count: int) -> str:
    for scale, suffix in ((1_000_000, "M"), (1_000, "k")):
        if count >= scale and count % scale == 0:
            return f"{count // scale}{suffix}"
    return f"{count:,}"


@contextmanager
def _services(root: Path) -> Iterator[Any]:
    """predserve's services over a registry at root, as the server wires them (in this process)."""
    from predserve.server.app import build_services
    from predserve.server.settings import ServerConfig

    services = build_services(ServerConfig(db_path=root / "predictions.db", models_dir=root / "models"))
    try:
        yield services
    finally:
        services.database.close()


def populate_types(root: Path, count: int) -> None:
    """`count` model types, one iris logistic regression set each."""
    from predserve.server.services.training import TrainCommand

    with _services(root) as services:
        _ingest_iris(services)
        for index in range(count):
            services.training.train(
                TrainCommand(model_type=f"type_{index:04d}", algorithm="logistic_regression", dataset="iris")
            )


def populate_sets(root: Path, count: int) -> None:
    """`count` sets of one model type (each its own artifact, as hourly retraining leaves them)."""
    from predserve.server.services.training import TrainCommand

    with _services(root) as services:
        _ingest_iris(services)
        for index in range(count):
            command = TrainCommand(
                model_type="hourly", algorithm="logistic_regression", dataset="iris", random_seed=index + 1
            )
            services.training.train(command)


def _ingest_iris(services: Any) -> None:
    from sklearn.datasets import load_iris

    from predserve.server.domain import HistoryRow

    bunch = load_iris()
    rows = [HistoryRow(tuple(map(float, x)), int(y)) for x, y in zip(bunch.data, bunch.target, strict=True)]
    services.history.ingest("iris", list(bunch.feature_names), rows)


def median_seconds(call: Callable[[], object], calls: int) -> float:
    for _ in range(min(20, calls)):  # warm: connections, caches
        call()
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


@contextmanager
def serving(root: Path, extra_args: Sequence[str] = ()) -> Iterator[tuple[ServerProcess, PredserveClient]]:
    process = ServerProcess(root, extra_args=["--reload-interval", "0", *extra_args]).start()
    try:
        with PredserveClient(process.target, deadline_seconds=120) as client:
            yield process, client
    finally:
        process.stop()


def startup_seconds(root: Path, model_type: str) -> float:
    """From spawning the server to its first answered Predict."""
    port = free_port()
    process = ServerProcess(root, extra_args=["--reload-interval", "0"], port=port)
    started = time.perf_counter()
    process.start(wait=False)
    try:
        with PredserveClient(f"127.0.0.1:{port}", deadline_seconds=5, max_attempts=1) as client:

            def answered() -> bool:
                if process.process is not None and process.process.poll() is not None:
                    raise RuntimeError(f"server exited:\n{process.log()}")
                try:
                    client.predict(model_type, [IRIS_ROW])
                except Exception:
                    return False
                return True

            wait_until(answered, 300, "the first Predict", interval=0.01)
        return time.perf_counter() - started
    finally:
        process.stop()


def _predict_call(client: PredserveClient, model_type: str, prediction_set_id: int = 0) -> Callable[[], object]:
    return lambda: client.predict(model_type, [IRIS_ROW], prediction_set_id=prediction_set_id)


def _page_call(client: PredserveClient, model_type: str) -> Callable[[], object]:
    return lambda: client.list_prediction_sets(model_type)


def measure_types(small: Path, large: Path, sizes: Sizes) -> list[Figure]:
    figures = []
    start_small = statistics.median(startup_seconds(small, "type_0000") for _ in range(sizes.startups))
    start_large = statistics.median(startup_seconds(large, "type_0000") for _ in range(sizes.startups))
    per_model = (start_large - start_small) / (sizes.large_types - sizes.small_types)
    figures.append(
        Figure(
            f"start-up, {sizes.small_types} vs {sizes.large_types} model types",
            start_small,
            start_large,
            "",
            None,
            f"{per_model * 1e3:.2f} ms per further model (target <= 5 ms)",
        )
    )
    timings: dict[str, dict[str, float]] = {}
    for label, root, count in (("small", small, sizes.small_types), ("large", large, sizes.large_types)):
        with serving(root) as (_, client):
            timings[label] = {
                "list_models_per_type": median_seconds(client.list_models, max(20, sizes.calls // 10)) / count,
                "predict": median_seconds(_predict_call(client, "type_0000"), sizes.calls),
            }
    figures.append(
        Figure(
            f"ListModels per model type, {sizes.small_types} vs {sizes.large_types}",
            timings["small"]["list_models_per_type"],
            timings["large"]["list_models_per_type"],
            " / type",
            1.3,
        )
    )
    figures.append(
        Figure(
            f"Predict p50 with {sizes.small_types} vs {sizes.large_types} model types loaded",
            timings["small"]["predict"],
            timings["large"]["predict"],
            "",
            1.3,
        )
    )
    return figures


def measure_sets(small: Path, large: Path, sizes: Sizes) -> list[Figure]:
    timings: dict[str, dict[str, float]] = {}
    for label, root, count in (("small", small, sizes.small_sets), ("large", large, sizes.large_sets)):
        with serving(root) as (_, client):
            page = median_seconds(_page_call(client, "hourly"), max(20, sizes.calls // 10))
            pinned = median_seconds(_predict_call(client, "hourly", prediction_set_id=1), sizes.calls)
            keep = count - 50  # each gc retires the same 50 sets, whatever the history
            started = time.perf_counter()
            client.garbage_collect(keep=keep)
            timings[label] = {"page": page, "pinned": pinned, "gc": time.perf_counter() - started}
    return [
        Figure(
            f"a page of ListPredictionSets, {sizes.small_sets} vs {sizes.large_sets} sets",
            timings["small"]["page"],
            timings["large"]["page"],
            "",
            1.3,
        ),
        Figure(
            f"Predict pinned to the oldest set, {sizes.small_sets} vs {sizes.large_sets} sets",
            timings["small"]["pinned"],
            timings["large"]["pinned"],
            "",
            1.3,
        ),
        Figure(
            f"gc retiring 50 sets, of {sizes.small_sets} vs {sizes.large_sets}",
            timings["small"]["gc"],
            timings["large"]["gc"],
            "",
            None,
        ),
    ]


def measure_training_data(root: Path, sizes: Sizes) -> list[Curve]:
    """Train's data load, in process (bench/training_data.py), and a real server's whole Train less its fit,
    over random datasets of `sizes.data_rows` rows, each in a registry of its own."""
    load: dict[int, float] = {}
    non_fit: dict[int, float] = {}
    fits: dict[int, float] = {}
    for rows in sizes.data_rows:
        lab = root / f"data_{rows}"
        lab.mkdir()
        logger.info("Train's data load and a whole Train over %d rows", rows)
        with _services(lab) as services:
            training_data.ingest(services, rows, FEATURES)
            load[rows] = statistics.median(training_data.timed(training_data.data_load(services), LOAD_REPEATS)) / rows
        command = training_data.TRAIN
        with serving(lab) as (_, client):
            started = time.perf_counter()
            answer = client.train(command.model_type, command.dataset, command.algorithm, timeout=TRAIN_TIMEOUT_SECONDS)
            seconds = time.perf_counter() - started
        fits[rows] = answer.fit_seconds
        non_fit[rows] = (seconds - answer.fit_seconds) / rows
    fitted = ", ".join(f"{fits[rows]:.2f}" for rows in sorted(fits))
    return [
        Curve(
            f"Train's data load (in process, median of {LOAD_REPEATS})",
            load,
            1.3,
            LOAD_TARGET_RATE,
            f"{FEATURES} features, binary copy",
        ),
        Curve(
            "Train's non-fit time (gRPC Train's wall time less its fit_seconds)",
            non_fit,
            1.3,
            note=f"one LogisticRegression Train; its fits ({fitted} s) not counted",
        ),
    ]


def measure_ingest(root: Path, sizes: Sizes) -> Curve:
    """`predserve ingest --csv` end to end against a real server on fresh SQLite (bench/ingest.py)."""
    per_row: dict[int, float] = {}
    for rows in sizes.ingest_rows:
        lab = root / f"ingest_{rows}"
        lab.mkdir()
        logger.info("ingest of %d rows through the CLI", rows)
        csv_path = lab / "history.csv"
        ingest_bench.write_csv(csv_path, rows, FEATURES)
        per_row[rows] = ingest_bench.throughput(lab, csv_path, rows)["seconds"] / rows
        csv_path.unlink()  # 1M rows take about 200 MB
    return Curve(
        "ingest --csv (CLI, end to end, single run)",
        per_row,
        None,
        ingest_bench.TARGET_RATE,
        f"{FEATURES} features, fresh SQLite; the CLI's start-up weighs on small files",
    )


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# make bench-scale",
        "",
        f"{results['started']}, {_machine_text(results['machine'])}; the whole run took {results['seconds']:.0f} s.",
        "",
        "| cost | small | large | ratio | limit | met | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["figures"]:
        lines.append("| " + " | ".join(str(row[key]) for key in row) + " |")
    return "\n".join(lines) + "\n"


def _machine_text(facts: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in facts["versions"].items())
    load = " ".join(facts["load_average_at_start"])
    return f"{facts['cpu']}, {facts['cores']} cores, Python {facts['python']}, {versions}; load average at start {load}"


def plot(results: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False

    rows = results["figures"]
    bars_height = 0.5 * len(rows) + 1.5
    figure = plt.figure(figsize=(12, bars_height + 5.5), layout="constrained")
    # Subfigures lay out apart: the long names of the bars do not squeeze the curves' panel.
    top, bottom = figure.subfigures(2, 1, squeeze=False, height_ratios=(bars_height, 5.5))[:, 0]
    axis, curves = top.subplots(), bottom.subplots()
    names = [row["cost"] for row in rows]
    axis.barh(
        names, [row["ratio"] for row in rows], color=["#c44" if row["met"] == "**MISS**" else "#48a" for row in rows]
    )
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.axvline(1.3, color="#888", linestyle="--", linewidth=0.8, label="flat target (1.3x)")
    axis.set_xlabel("large case / small case (1 = flat)")
    axis.invert_yaxis()
    axis.legend(loc="lower right")
    axis.set_title("How predserve's costs grow with history")
    _plot_curves(curves, results["curves"])
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _plot_curves(axis: Any, curves: list[dict[str, Any]]) -> None:
    """Seconds per row against rows, log-log: a flat line is a cost linear in the rows."""
    for curve, color in zip(curves, ("#48a", "#a84", "#4a8", "#84a"), strict=False):
        axis.plot(curve["rows"], [s * 1e6 for s in curve["seconds_per_row"]], "o-", color=color, label=curve["cost"])
        if curve["target_rate"]:
            target = 1e6 / curve["target_rate"]
            axis.axhline(
                target, color=color, linestyle=":", linewidth=0.8, label=f"target {curve['target_rate']:,.0f} rows/s"
            )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("rows")
    axis.set_ylabel("µs per row")
    axis.set_title("Costs that follow a dataset's rows (flat = linear)")
    axis.grid(True, which="both", linewidth=0.3)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))


def run(sizes: Sizes, out_dir: Path, keep: bool) -> dict[str, Any]:
    began = time.time()
    root = Path(tempfile.mkdtemp(prefix="predserve-scale-"))
    try:
        labs = {name: root / name for name in ("types_small", "types_large", "sets_small", "sets_large")}
        for lab in labs.values():
            lab.mkdir()
        logger.info("populating %d and %d model types", sizes.small_types, sizes.large_types)
        populate_types(labs["types_small"], sizes.small_types)
        populate_types(labs["types_large"], sizes.large_types)
        logger.info("populating %d and %d sets of one model type", sizes.small_sets, sizes.large_sets)
        populate_sets(labs["sets_small"], sizes.small_sets)
        populate_sets(labs["sets_large"], sizes.large_sets)
        logger.info("measuring")
        figures = measure_types(labs["types_small"], labs["types_large"], sizes)
        figures += measure_sets(labs["sets_small"], labs["sets_large"], sizes)
        curves = [*measure_training_data(root, sizes), measure_ingest(root, sizes)]
        figures += [figure for curve in curves for figure in curve.figures()]
    finally:
        if keep:
            logger.info("kept %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(began)),
        "seconds": time.time() - began,
        "machine": machine(),
        "sizes": sizes.__dict__,
        "figures": [figure.row() for figure in figures],
        "curves": [curve.points() for curve in curves],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scale.json").write_text(json.dumps(results, indent=2))
    (out_dir / "scale.md").write_text(markdown(results))
    plot(results, out_dir / "scale.png")
    print(markdown(results))
    return results


def row_counts(text: str) -> tuple[int, ...]:
    """Ascending row counts from "10000,100000,1000000"; a single count N stands for N/10 and N."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of row counts") from None
    if len(counts) == 1:
        counts = (counts[0] // 10, counts[0])
    if counts[0] < MIN_ROWS or list(counts) != sorted(set(counts)):
        raise argparse.ArgumentTypeError(f"{text!r}: give ascending row counts of at least {MIN_ROWS}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("predserve").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    defaults = Sizes()
    parser.add_argument("--large-types", type=int, default=defaults.large_types)
    parser.add_argument("--large-sets", type=int, default=defaults.large_sets)
    parser.add_argument("--calls", type=int, default=defaults.calls, help="timed calls per figure")
    parser.add_argument(
        "--data-rows",
        type=row_counts,
        default=defaults.data_rows,
        help="rows of the datasets Train loads, e.g. 10000,100000,1000000 (one count N means N/10 and N)",
    )
    parser.add_argument(
        "--ingest-rows",
        type=row_counts,
        default=defaults.ingest_rows,
        help="rows of the CSV files ingested through the CLI, e.g. 100000,1000000 (one count N means N/10 and N)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the populated registries")
    args = parser.parse_args(argv)
    sizes = Sizes(
        large_types=args.large_types,
        large_sets=args.large_sets,
        calls=args.calls,
        data_rows=args.data_rows,
        ingest_rows=args.ingest_rows,
    )
    run(sizes, args.out, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
