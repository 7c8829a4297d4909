"""Artifacts on object storage (issue 25): the four targets, against a real S3 server (rclone serve s3) here.

1. Start-up with 20 current sets: a local models directory (the baseline), then --artifact-store s3:// with a
   warm cache (every file cached) and with a cold one (the cache emptied before each start). Each start is
   timed from the process's launch to its port file (the port is bound only once every set is loaded),
   alternating the three modes, and the medians are compared.
2. Propagation: replica A trains, replica B (its own models directory, the same registry and bucket) serves
   the new set; the time from A's answer to B's first answer with the new set, p50 and p95 over the Trains.
3. Predict: the same set served by a local-directory server and by an object-store one, called in
   alternating rounds; the ratio of their median latencies and of their CPU per call.

    python -m bench.object_store [--starts 5] [--trains 20] [--predicts 2000]   (part of make bench-replicas)

Every process shares this one host's cores; figures are ratios against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procstats import cpu_seconds, process_tree
from harness.launcher import ServerProcess
from harness.s3_server import S3Server
from predserve.client.library import PredserveClient
from tests.postgres_cluster import PostgresCluster, find_bindir
from tests.support import IRIS_PROBES, iris_rows

STORE = "s3://models/bench"  # bench/replicas.py's; each measurement here has a prefix of its own
TYPES = 20
FAST_RELOAD = ["--reload-interval", "60"]  # B follows by NOTIFY on PostgreSQL; polling only on SQLite


@dataclass
class Figures:
    local_start: float
    warm_start: float
    cold_start: float
    propagation_p50: float
    propagation_p95: float
    propagations: int
    notified: bool
    predict_local_us: float
    predict_store_us: float
    cpu_local_us: float
    cpu_store_us: float


def _store_server(
    root: Path, name: str, s3: S3Server, db: str | Path, prefix: str, extra: list[str] | None = None
) -> ServerProcess:
    workdir = root / name
    workdir.mkdir(exist_ok=True)
    args = ["--artifact-store", f"s3://models/{prefix}", *(extra or [])]
    return ServerProcess(workdir, db=db, models_dir=workdir / "cache", extra_args=args, env=s3.env())


def _timed_start(server: ServerProcess) -> float:
    started = time.perf_counter()
    server.start()
    elapsed = time.perf_counter() - started
    server.kill()
    return elapsed


def measure_startups(root: Path, s3: S3Server, starts: int) -> tuple[float, float, float]:
    """Median start-up seconds: local directory, warm cache, cold cache."""
    trainer = _store_server(root, "trainer", s3, root / "startup.db", "startup").start()
    names, rows = iris_rows()
    with PredserveClient(trainer.target) as client:
        client.ingest("iris", rows, names)
        for index in range(TYPES):
            client.train(f"type_{index:02d}", "iris", "logistic_regression")
    trainer.kill()
    # The same registry and files, served from a directory: the keys are the file names.
    local_dir = root / "local-models"
    shutil.copytree(s3.object_path("models", "startup"), local_dir)
    shutil.copy(root / "startup.db", root / "local.db")
    local = ServerProcess(root / "trainer", db=root / "local.db", models_dir=local_dir)
    warm = _store_server(root, "warm", s3, root / "startup.db", "startup")
    shutil.copytree(trainer.models_dir, warm.models_dir)
    cold = _store_server(root, "cold", s3, root / "startup.db", "startup")
    times: dict[str, list[float]] = {"local": [], "warm": [], "cold": []}
    _timed_start(local)  # one start first, so that every timed one finds the file system cache equally warm
    for _ in range(starts):
        times["local"].append(_timed_start(local))
        times["warm"].append(_timed_start(warm))
        shutil.rmtree(cold.models_dir, ignore_errors=True)
        times["cold"].append(_timed_start(cold))
    return tuple(statistics.median(times[mode]) for mode in ("local", "warm", "cold"))  # type: ignore[return-value]


def measure_propagation(root: Path, s3: S3Server, trains: int, registry: str | Path, notified: bool) -> list[float]:
    extra = FAST_RELOAD if notified else ["--reload-interval", "0.2"]
    a = _store_server(root, "a", s3, registry, "replicas", extra).start()
    b = _store_server(root, "b", s3, registry, "replicas", extra)
    delays = []
    try:
        names, rows = iris_rows()
        with PredserveClient(a.target) as client:
            client.ingest("iris", rows, names)
            client.train("iris_classifier", "iris", "logistic_regression")
        b.start()
        with PredserveClient(a.target) as on_a, PredserveClient(b.target) as on_b:
            for _ in range(trains):
                new = on_a.train("iris_classifier", "iris", "logistic_regression").prediction_set_id
                answered = time.perf_counter()
                while on_b.predict("iris_classifier", IRIS_PROBES[:1]).prediction_set_id != new:
                    if time.perf_counter() - answered > 30:
                        raise TimeoutError(f"replica B did not serve set {new} within 30 s")
                    time.sleep(0.002)
                delays.append(time.perf_counter() - answered)
    finally:
        for server in (a, b):
            if server.process is not None:
                server.kill()
    return delays


def _predict_round(server: ServerProcess, client: PredserveClient, calls: int) -> tuple[float, float]:
    """Median latency and server CPU per call, in microseconds, over `calls` sequential Predicts."""
    assert server.process is not None
    latencies = []
    cpu_before = cpu_seconds(process_tree(server.process.pid))
    for _ in range(calls):
        started = time.perf_counter()
        client.predict("iris_classifier", IRIS_PROBES[:1])
        latencies.append(time.perf_counter() - started)
    cpu = cpu_seconds(process_tree(server.process.pid)) - cpu_before
    return statistics.median(latencies) * 1e6, cpu / calls * 1e6


def measure_predict(root: Path, s3: S3Server, calls: int) -> tuple[float, float, float, float]:
    store = _store_server(root, "predict-store", s3, root / "predict.db", "predict").start()
    names, rows = iris_rows()
    with PredserveClient(store.target) as client:
        client.ingest("iris", rows, names)
        client.train("iris_classifier", "iris", "logistic_regression")
    local_dir = root / "predict-local"
    shutil.copytree(store.models_dir, local_dir)
    shutil.copy(root / "predict.db", root / "predict-local.db")
    (root / "predict-local-run").mkdir()
    local = ServerProcess(root / "predict-local-run", db=root / "predict-local.db", models_dir=local_dir).start()
    rounds: dict[str, list[tuple[float, float]]] = {"local": [], "store": []}
    try:
        with PredserveClient(local.target) as on_local, PredserveClient(store.target) as on_store:
            for client in (on_local, on_store):  # warm-up: connections, first calls
                for _ in range(200):
                    client.predict("iris_classifier", IRIS_PROBES[:1])
            for _ in range(4):
                rounds["local"].append(_predict_round(local, on_local, calls // 4))
                rounds["store"].append(_predict_round(store, on_store, calls // 4))
    finally:
        local.kill()
        store.kill()
    medians = {mode: [statistics.median(values) for values in zip(*rounds[mode], strict=True)] for mode in rounds}
    return medians["local"][0], medians["store"][0], medians["local"][1], medians["store"][1]


def run(starts: int, trains: int, predicts: int) -> Figures:
    root = Path(tempfile.mkdtemp(prefix="predserve-bench-store-"))
    s3 = S3Server(root / "s3").start()
    bindir = find_bindir()
    cluster = PostgresCluster(bindir).start() if bindir else None
    try:
        local, warm, cold = measure_startups(root, s3, starts)
        registry: str | Path = cluster.create_database() if cluster else root / "replicas.db"
        delays = measure_propagation(root, s3, trains, registry, notified=cluster is not None)
        predict_local, predict_store, cpu_local, cpu_store = measure_predict(root, s3, predicts)
    finally:
        s3.kill()
        if cluster:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    ordered = sorted(delays)
    return Figures(
        local,
        warm,
        cold,
        statistics.median(ordered),
        ordered[max(0, int(len(ordered) * 0.95 + 0.5) - 1)],
        len(ordered),
        cluster is not None,
        predict_local,
        predict_store,
        cpu_local,
        cpu_store,
    )


def table(figures: Figures) -> str:
    f = figures
    registry = "PostgreSQL, NOTIFY" if f.notified else "shared SQLite file, polling every 0.2 s"
    lines = [
        f"Object store (rclone serve s3 on 127.0.0.1), {os.cpu_count()} CPU(s), all processes on this host.",
        "",
        "| target | baseline | object store | ratio or figure | goal |",
        "|---|---|---|---|---|",
        f"| start-up, {TYPES} current sets, warm cache | local directory {f.local_start:.2f} s | "
        f"{f.warm_start:.2f} s | {f.warm_start / f.local_start:.2f}x | <= 1.1x |",
        f"| start-up, {TYPES} current sets, cold cache | local directory {f.local_start:.2f} s | "
        f"{f.cold_start:.2f} s | {f.cold_start / f.local_start:.2f}x | <= 2x |",
        f"| replica B serves A's new set ({registry}), {f.propagations} Trains | | "
        f"p50 {f.propagation_p50 * 1000:.0f} ms | p95 {f.propagation_p95 * 1000:.0f} ms | p95 <= 1 s |",
        f"| Predict median latency, 1 row | local directory {f.predict_local_us:.0f} us | "
        f"{f.predict_store_us:.0f} us | {f.predict_store_us / f.predict_local_us:.2f}x | unchanged |",
        f"| server CPU per Predict | local directory {f.cpu_local_us:.0f} us | {f.cpu_store_us:.0f} us | "
        f"{f.cpu_store_us / f.cpu_local_us:.2f}x | unchanged |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.object_store", description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="timed start-ups per mode")
    parser.add_argument("--trains", type=int, default=20, help="Trains on replica A whose arrival on B is timed")
    parser.add_argument("--predicts", type=int, default=2000, help="Predicts per server, in 4 alternating rounds")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    text = table(run(args.starts, args.trains, args.predicts))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
