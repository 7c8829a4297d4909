"""The two benchmark runs: predserve against its floors (`run`), and predserve against MLServer (`compare`)."""

from __future__ import annotations

import logging
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from bench import mlserver, report, scenarios, typed_data
from bench.labs import (
    FOREST_MODEL,
    HGB_MODEL,
    IRIS_MODEL,
    TYPED_HGB_MODEL,
    TYPED_LR_MODEL,
    Labs,
    feature_rows,
    stop,
    typed_request_frame,
)
from bench.procstats import CORES

logger = logging.getLogger(__name__)

# MLServer's best set-up as the issue measured it on this kind of machine; `bench-compare` measures them live.
ISSUE_MLSERVER_BEST_RPS = {"iris_1row_c8": 466.0, "forest_1row_c8": 60.0}


TYPED_PREFIX = "churn_"  # the workloads of typed sets (issue 23): DataFrames sent one input per column


def serves(server: str, workload_key: str) -> bool:
    """Whether a server holds a workload's model: predserve's typed lab the typed sets, MLServer every one."""
    if server.startswith("mlserver"):
        return True
    return ("_typed" in server) == workload_key.startswith(TYPED_PREFIX)


class Workload:
    """The rows each scenario sends (a matrix, or a DataFrame for a typed set), and the pipelines for the
    in-process floor: pipeline.predict of the very rows or DataFrame."""

    def __init__(self, artifacts: dict[str, Path], typed_artifacts: dict[str, Path]) -> None:
        iris, cancer = feature_rows("iris"), feature_rows("breast_cancer")
        one, thousand = typed_request_frame(1), typed_request_frame(1000)
        self.rows: dict[str, tuple[str, Any]] = {
            "iris_1row": (IRIS_MODEL, iris[:1]),
            "forest_1row": (FOREST_MODEL, cancer[:1]),
            "iris_1000": (IRIS_MODEL, np.resize(iris, (1000, iris.shape[1]))),
            "forest_1000": (FOREST_MODEL, np.resize(cancer, (1000, cancer.shape[1]))),
            "hgb_1row": (HGB_MODEL, cancer[:1]),
            "hgb_1000": (HGB_MODEL, np.resize(cancer, (1000, cancer.shape[1]))),
            "churn_lr_1row": (TYPED_LR_MODEL, one),
            "churn_hgb_1row": (TYPED_HGB_MODEL, one),
            "churn_lr_1000": (TYPED_LR_MODEL, thousand),
            "churn_hgb_1000": (TYPED_HGB_MODEL, thousand),
        }
        self.probes = {model: iris[:1] if model.startswith("iris") else cancer[:1] for model in artifacts}
        self.pipelines = {model: joblib.load(artifacts[model]) for model in (IRIS_MODEL, FOREST_MODEL, HGB_MODEL)}
        self.pipelines.update({model: joblib.load(path) for model, path in typed_artifacts.items()})

    def expected(self, key: str) -> np.ndarray:
        model, rows = self.rows[key]
        return np.asarray(self.pipelines[model].predict(rows))


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": CORES,
        "memory_gib": round(memory_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {name: metadata.version(name) for name in ("grpcio", "protobuf", "scikit-learn", "numpy")},
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"rounds": len(runs)}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = round(statistics.median(run[key] for run in runs), 3)
    return merged


class Recorder:
    def __init__(self) -> None:
        self.runs: dict[str, list[dict[str, Any]]] = {}

    def add(self, name: str, figures: dict[str, Any]) -> None:
        self.runs.setdefault(name, []).append(figures)
        logger.info("%-34s %s", name, {k: v for k, v in figures.items() if k != "error_samples"})

    def medians(self) -> dict[str, dict[str, Any]]:
        return {name: {**_medians(runs), "runs": runs} for name, runs in self.runs.items()}


def _inprocess(recorder: Recorder, workload: Workload, seconds: float) -> None:
    for key, (model, rows) in workload.rows.items():
        latencies = scenarios.inprocess_latencies(workload.pipelines[model], rows, 2000, seconds)
        recorder.add(f"inprocess/{key}", scenarios.inprocess_summary(latencies, len(rows)))


def run_bench(
    rounds: int, seconds: float, out_dir: Path, keep_labs: bool = False, typed_rows: int = 1_000_000
) -> dict[str, Any]:
    started = time.time()
    labs = Labs()
    try:
        labs.prepare()
        artifacts = labs.twenty.artifacts()
        workload = Workload(artifacts, labs.typed.artifacts())
        startup_artifacts = (list(labs.one.artifacts().values()), list(artifacts.values()))
        recorder = Recorder()
        servers = {
            "predserve": labs.twenty.server(),
            "predserve_nobatch": labs.twenty.server(("--batch-max-rows", "0")),
            "predserve_workers2": labs.twenty.server(("--workers", "2")),
            # The same artifacts answered by the pipelines themselves: what the compiled runtimes change.
            "predserve_sklearn": labs.twenty.server(("--runtime", "sklearn")),
            "predserve_sklearn_nobatch": labs.twenty.server(("--runtime", "sklearn", "--batch-max-rows", "0")),
            # The typed sets (issue 23), compiled and as pipelines answering a DataFrame per call.
            "predserve_typed": labs.typed.server(),
            "predserve_typed_sklearn": labs.typed.server(("--runtime", "sklearn")),
        }
        for process in servers.values():
            process.start()
        try:
            for name, process in servers.items():
                for key, (checked_model, checked_rows) in workload.rows.items():
                    if serves(name, key):
                        scenarios.check_labels(process.target, checked_model, checked_rows, workload.expected(key))
                logger.info("%s answers as the pipelines do in process (pid %d)", name, process.process.pid)  # type: ignore[union-attr]
            plan = _load_plan()
            for round_index in range(rounds):
                logger.info("round %d of %d", round_index + 1, rounds)
                for name, server, workload_key, concurrency in plan:
                    rows: Any
                    model, rows = workload.rows[workload_key] if workload_key else ("", None)
                    if server is None:
                        latencies = scenarios.inprocess_latencies(workload.pipelines[model], rows, 5000, seconds)
                        recorder.add(name, scenarios.inprocess_summary(latencies, len(rows)))
                        continue
                    process = servers[server]
                    figures = scenarios.load_run(
                        process.target,
                        model or None,
                        rows if workload_key else None,
                        concurrency,
                        scenarios.pids_of(process),
                        seconds,
                    )
                    recorder.add(name, figures)
                _startups(recorder, labs, workload, startup_artifacts)
        finally:
            for process in servers.values():
                stop(process)
        train = scenarios.train_overhead(labs.train, max(rounds, 5))
        logger.info("train: %s", train)
        memory = scenarios.memory(labs.twenty, labs.empty, artifacts, workload.probes)
        logger.info("memory: %s", memory)
        typed = typed_data.measure(typed_rows, repeats=max(rounds, 3)) if typed_rows else None
        logger.info("typed data: %s", typed)
        results = {
            "kind": "bench",
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "machine": machine(),
            "rounds": rounds,
            "seconds_per_run": seconds,
            "scenarios": recorder.medians(),
            "train": train,
            "memory": memory,
            "typed_data": typed,
        }
        results["targets"] = report.targets(results, ISSUE_MLSERVER_BEST_RPS, measured_peer=False)
        report.write(results, out_dir, "bench")
        return results
    finally:
        if keep_labs:
            logger.info("labs kept in %s", labs.root)
        else:
            labs.remove()


def _load_plan() -> list[tuple[str, str | None, str | None, int]]:
    """(result name, server or None for in process, workload key or None for the empty call, concurrency).

    Each floor is measured right before the runs that are divided by it, so that both see the same
    machine: other engineers' test runs come and go within seconds on this 2-core machine.
    """
    return [
        ("predserve/empty_c1", "predserve", None, 1),
        ("inprocess/iris_1row", None, "iris_1row", 1),
        ("predserve/iris_1row_c1", "predserve", "iris_1row", 1),
        ("predserve_sklearn/iris_1row_c1", "predserve_sklearn", "iris_1row", 1),
        ("inprocess/forest_1row", None, "forest_1row", 1),
        ("predserve/forest_1row_c1", "predserve", "forest_1row", 1),
        ("predserve_sklearn/forest_1row_c1", "predserve_sklearn", "forest_1row", 1),
        ("inprocess/hgb_1row", None, "hgb_1row", 1),
        ("predserve/hgb_1row_c1", "predserve", "hgb_1row", 1),
        ("predserve_sklearn/hgb_1row_c1", "predserve_sklearn", "hgb_1row", 1),
        ("predserve/empty_c8", "predserve", None, 8),
        ("predserve/iris_1row_c8", "predserve", "iris_1row", 8),
        ("predserve_sklearn/iris_1row_c8", "predserve_sklearn", "iris_1row", 8),
        ("predserve_workers2/iris_1row_c8", "predserve_workers2", "iris_1row", 8),
        ("predserve/forest_1row_c8", "predserve", "forest_1row", 8),
        ("predserve_nobatch/forest_1row_c8", "predserve_nobatch", "forest_1row", 8),
        ("predserve_sklearn/forest_1row_c8", "predserve_sklearn", "forest_1row", 8),
        ("predserve_sklearn_nobatch/forest_1row_c8", "predserve_sklearn_nobatch", "forest_1row", 8),
        ("predserve_workers2/forest_1row_c8", "predserve_workers2", "forest_1row", 8),
        ("predserve/hgb_1row_c8", "predserve", "hgb_1row", 8),
        ("predserve_sklearn/hgb_1row_c8", "predserve_sklearn", "hgb_1row", 8),
        ("inprocess/iris_1000", None, "iris_1000", 1),
        ("predserve/iris_1000_c1", "predserve", "iris_1000", 1),
        ("predserve/iris_1000_c2", "predserve", "iris_1000", 2),
        ("predserve_workers2/iris_1000_c2", "predserve_workers2", "iris_1000", 2),
        ("inprocess/forest_1000", None, "forest_1000", 1),
        ("predserve/forest_1000_c1", "predserve", "forest_1000", 1),
        ("predserve_sklearn/forest_1000_c1", "predserve_sklearn", "forest_1000", 1),
        ("inprocess/hgb_1000", None, "hgb_1000", 1),
        ("predserve/hgb_1000_c1", "predserve", "hgb_1000", 1),
        ("predserve_sklearn/hgb_1000_c1", "predserve_sklearn", "hgb_1000", 1),
        ("predserve_typed/empty_c1", "predserve_typed", None, 1),
        ("inprocess/churn_lr_1row", None, "churn_lr_1row", 1),
        ("predserve_typed/churn_lr_1row_c1", "predserve_typed", "churn_lr_1row", 1),
        ("predserve_typed_sklearn/churn_lr_1row_c1", "predserve_typed_sklearn", "churn_lr_1row", 1),
        ("inprocess/churn_hgb_1row", None, "churn_hgb_1row", 1),
        ("predserve_typed/churn_hgb_1row_c1", "predserve_typed", "churn_hgb_1row", 1),
        ("predserve_typed_sklearn/churn_hgb_1row_c1", "predserve_typed_sklearn", "churn_hgb_1row", 1),
        ("predserve_typed/empty_c8", "predserve_typed", None, 8),
        ("predserve_typed/churn_lr_1row_c8", "predserve_typed", "churn_lr_1row", 8),
        ("predserve_typed/churn_hgb_1row_c8", "predserve_typed", "churn_hgb_1row", 8),
        ("inprocess/churn_lr_1000", None, "churn_lr_1000", 1),
        ("predserve_typed/churn_lr_1000_c1", "predserve_typed", "churn_lr_1000", 1),
        ("predserve_typed_sklearn/churn_lr_1000_c1", "predserve_typed_sklearn", "churn_lr_1000", 1),
        ("inprocess/churn_hgb_1000", None, "churn_hgb_1000", 1),
        ("predserve_typed/churn_hgb_1000_c1", "predserve_typed", "churn_hgb_1000", 1),
        ("predserve_typed_sklearn/churn_hgb_1000_c1", "predserve_typed_sklearn", "churn_hgb_1000", 1),
    ]


def _startups(
    recorder: Recorder, labs: Labs, workload: Workload, startup_artifacts: tuple[list[Path], list[Path]]
) -> None:
    one_artifacts, twenty_artifacts = startup_artifacts
    probe = workload.probes[FOREST_MODEL]
    recorder.add("startup/floor_1", scenarios.startup_floor(one_artifacts))
    one_seconds = scenarios.predserve_startup(labs.one, FOREST_MODEL, probe)
    recorder.add("startup/predserve_1", {"seconds": round(one_seconds, 3)})
    recorder.add("startup/floor_20", scenarios.startup_floor(twenty_artifacts))
    recorder.add(
        "startup/predserve_20", {"seconds": round(scenarios.predserve_startup(labs.twenty, FOREST_MODEL, probe), 3)}
    )
    sklearn_only = scenarios.predserve_startup(labs.twenty, FOREST_MODEL, probe, ("--runtime", "sklearn"))
    recorder.add("startup/predserve_sklearn_20", {"seconds": round(sklearn_only, 3)})


def run_compare(rounds: int, seconds: float, out_dir: Path, keep_labs: bool = False) -> dict[str, Any]:
    """predserve and MLServer (two set-ups) on the same artifacts, driven in alternation by the same generator."""
    started = time.time()
    executable = mlserver.ensure_venv()
    labs = Labs()
    peers: dict[str, mlserver.MLServerProcess] = {}
    try:
        labs.prepare()
        artifacts = labs.twenty.artifacts()
        typed_artifacts = labs.typed.artifacts()
        workload = Workload(artifacts, typed_artifacts)
        recorder = Recorder()
        serving = {model: artifacts[model] for model in (IRIS_MODEL, FOREST_MODEL, HGB_MODEL)}
        serving.update(typed_artifacts)
        predserves = {
            "predserve": labs.twenty.server(),
            "predserve_workers2": labs.twenty.server(("--workers", "2")),
            # The same artifacts answered by the pipelines themselves: what the compiled runtimes change.
            "predserve_sklearn": labs.twenty.server(("--runtime", "sklearn")),
            "predserve_typed": labs.typed.server(),
            "predserve_typed_sklearn": labs.typed.server(("--runtime", "sklearn")),
        }
        for process in predserves.values():
            process.start()
        targets: dict[str, tuple[str, int]] = {}
        try:
            for name, process in predserves.items():
                targets[name] = (process.target, scenarios.pids_of(process))
            for setup in mlserver.SETUPS:
                peer = mlserver.MLServerProcess(executable, labs.root / "mlserver-serve", serving, setup)
                peers[setup] = peer
                model, rows = workload.rows["forest_1row"]
                seconds_to_answer, peer_process = scenarios.first_answer_seconds(peer.start, peer.target, model, rows)
                logger.info("%s answered after %.2fs", setup, seconds_to_answer)
                targets[setup] = (peer.target, peer_process.pid)
            for name, (target, _) in targets.items():
                for key in workload.rows:
                    if not serves(name, key):
                        continue
                    model, rows = workload.rows[key]
                    scenarios.check_labels(target, model, rows, workload.expected(key))
                logger.info("%s answers as the pipelines do in process", name)
            for round_index in range(rounds):
                logger.info("round %d of %d", round_index + 1, rounds)
                _inprocess(recorder, workload, seconds)
                for key, concurrency in _COMPARED:
                    model, rows = workload.rows[key]
                    for name, (target, pid) in targets.items():
                        if not serves(name, key):
                            continue
                        figures = scenarios.load_run(target, model, rows, concurrency, pid, seconds)
                        recorder.add(f"{name}/{key}_c{concurrency}", figures)
                _compare_startups(recorder, executable, labs, workload, artifacts)
        finally:
            for process in predserves.values():
                stop(process)
            for peer in peers.values():
                peer.stop()
        results = {
            "kind": "compare",
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "machine": machine(),
            "mlserver": mlserver.MLSERVER_VERSION,
            "rounds": rounds,
            "seconds_per_run": seconds,
            "scenarios": recorder.medians(),
        }
        results["targets"] = report.compare_targets(results)
        report.write(results, out_dir, "compare")
        return results
    finally:
        for peer in peers.values():
            peer.stop()
        if keep_labs:
            logger.info("labs kept in %s", labs.root)
        else:
            labs.remove()


_COMPARED = [
    ("iris_1row", 1),
    ("iris_1row", 8),
    ("forest_1row", 1),
    ("forest_1row", 8),
    ("hgb_1row", 1),
    ("hgb_1row", 8),
    ("iris_1000", 1),
    ("forest_1000", 1),
    ("hgb_1000", 1),
    ("churn_lr_1row", 1),
    ("churn_lr_1row", 8),
    ("churn_hgb_1row", 1),
    ("churn_hgb_1row", 8),
    ("churn_lr_1000", 1),
    ("churn_hgb_1000", 1),
]


def _compare_startups(
    recorder: Recorder, executable: Path, labs: Labs, workload: Workload, artifacts: dict[str, Path]
) -> None:
    probe = workload.probes[FOREST_MODEL]
    recorder.add(
        "startup/predserve_20", {"seconds": round(scenarios.predserve_startup(labs.twenty, FOREST_MODEL, probe), 3)}
    )
    for setup in mlserver.SETUPS:
        peer = mlserver.MLServerProcess(executable, labs.root / "mlserver-startup", artifacts, setup)
        try:
            seconds, _ = scenarios.first_answer_seconds(peer.start, peer.target, FOREST_MODEL, probe)
        finally:
            peer.stop()
        recorder.add(f"startup/{setup}_20", {"seconds": round(seconds, 3)})
