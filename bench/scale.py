"""make bench-scale: how each cost grows with history, as ratios of a large registry against a small one.

Registries are populated in process through predserve's own services (the same Train and registration a
server runs; a fit of iris takes milliseconds), then served by a real server process and timed through gRPC.
Every figure is a median over repeated calls in the same run; a ratio compares the large case with the small
one measured minutes apart on the same machine. Printed as a table and written to bench/results/scale.md,
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

from bench.run import machine
from bench.scenarios import free_port
from client.library import PredserveClient
from harness.launcher import ServerProcess
from harness.waiting import wait_until

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass(frozen=True)
class Sizes:
    small_types: int = 10
    large_types: int = 1000
    small_sets: int = 100
    large_sets: int = 10_000
    calls: int = 200


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


def _shown(value: float, unit: str) -> str:
    return f"{value * 1e3:.3f} ms{unit}"


@contextmanager
def _services(root: Path) -> Iterator[Any]:
    """predserve's services over a registry at root, as the server wires them (in this process)."""
    from server.app import build_services
    from server.settings import ServerConfig

    services = build_services(ServerConfig(db_path=root / "predictions.db", models_dir=root / "models"))
    try:
        yield services
    finally:
        services.database.close()


def populate_types(root: Path, count: int) -> None:
    """`count` model types, one iris logistic regression set each."""
    from server.services.training import TrainCommand

    with _services(root) as services:
        _ingest_iris(services)
        for index in range(count):
            services.training.train(
                TrainCommand(model_type=f"type_{index:04d}", algorithm="logistic_regression", dataset="iris")
            )


def populate_sets(root: Path, count: int) -> None:
    """`count` sets of one model type (each its own artifact, as hourly retraining leaves them)."""
    from server.services.training import TrainCommand

    with _services(root) as services:
        _ingest_iris(services)
        for index in range(count):
            command = TrainCommand(
                model_type="hourly", algorithm="logistic_regression", dataset="iris", random_seed=index + 1
            )
            services.training.train(command)


def _ingest_iris(services: Any) -> None:
    from sklearn.datasets import load_iris

    from server.domain import HistoryRow

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
    start_small = statistics.median(startup_seconds(small, "type_0000") for _ in range(3))
    start_large = statistics.median(startup_seconds(large, "type_0000") for _ in range(3))
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


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["figures"]
    figure, axis = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.5))
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
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scale.json").write_text(json.dumps(results, indent=2))
    (out_dir / "scale.md").write_text(markdown(results))
    plot(results, out_dir / "scale.png")
    print(markdown(results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("server").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    defaults = Sizes()
    parser.add_argument("--large-types", type=int, default=defaults.large_types)
    parser.add_argument("--large-sets", type=int, default=defaults.large_sets)
    parser.add_argument("--calls", type=int, default=defaults.calls, help="timed calls per figure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the populated registries")
    args = parser.parse_args(argv)
    sizes = Sizes(large_types=args.large_types, large_sets=args.large_sets, calls=args.calls)
    run(sizes, args.out, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
