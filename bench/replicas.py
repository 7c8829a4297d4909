"""Predict throughput against 1 and then 2 replicas, through the client's round-robin balancing.

Replicas share nothing but a throw-away PostgreSQL registry (when PostgreSQL is installed; a shared SQLite
file otherwise) and a bucket on a real S3 server (rclone serve s3): each has a models directory of its own, its
cache. Load comes from separate client processes, each with one PredserveClient over every replica's address,
for a fixed time; only successful calls count. Then bench/object_store.py measures the object store's targets
(start-up, propagation between replicas, Predict), unless --no-object-store.

    python -m bench.replicas [--seconds 8] [--clients 4] [--rows 1]      (make bench-replicas)

Every process runs on this one host: the replicas and the load generators share its cores, so the
ratio says how much a second replica helps here, not on a cluster where each replica has its own.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import object_store
from harness.launcher import ServerProcess
from harness.s3_server import S3Server
from predserve.client.library import PredserveClient
from tests.postgres_cluster import PostgresCluster, find_bindir
from tests.support import IRIS_PROBES, iris_rows


def predict_for(targets: list[str], seconds: float, rows: int, start_at: float) -> int:
    """Runs in a client process: Predict calls until the time is up; returns how many succeeded."""
    batch = (IRIS_PROBES * (rows // len(IRIS_PROBES) + 1))[:rows]
    done = 0
    with PredserveClient(targets, deadline_seconds=10) as client:
        client.wait_until_ready(30)
        client.predict("iris_classifier", batch)  # connections to every replica are up before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.time() + seconds
        while time.time() < deadline:
            client.predict("iris_classifier", batch)
            done += 1
    return done


def measure(targets: list[str], clients: int, seconds: float, rows: int) -> float:
    context = multiprocessing.get_context("spawn")  # no gRPC state may cross a fork
    with context.Pool(clients) as pool:
        start_at = time.time() + 3.0  # time for every client process to start and connect
        results = [pool.apply_async(predict_for, (targets, seconds, rows, start_at)) for _ in range(clients)]
        return sum(result.get(timeout=seconds + 120) for result in results) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.replicas", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per configuration")
    parser.add_argument("--clients", type=int, default=4, help="client processes generating load")
    parser.add_argument("--rows", type=int, default=1, help="rows per Predict")
    parser.add_argument("--no-object-store", action="store_true", help="skip bench/object_store.py's targets")
    parser.add_argument("--out", type=Path, help="also write the object store's table to this file")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="predserve-bench-replicas-"))
    s3 = S3Server(root / "s3").start()
    bindir = find_bindir()
    cluster = PostgresCluster(bindir).start() if bindir else None
    registry = cluster.create_database() if cluster else str(root / "shared.db")
    replicas: list[ServerProcess] = []
    try:
        for name in ("r1", "r2"):
            (root / name).mkdir()
            store_args = ["--artifact-store", object_store.STORE]
            replicas.append(
                ServerProcess(
                    root / name, db=registry, models_dir=root / name / "cache", extra_args=store_args, env=s3.env()
                )
            )
        replicas[0].start()
        names, rows = iris_rows()
        with PredserveClient(replicas[0].target) as client:
            client.ingest("iris", rows, names)
            client.train("iris_classifier", "iris", "logistic_regression")
        replicas[1].start()  # loads the trained model at start-up, like any new replica

        print(
            f"registry: {'PostgreSQL (throw-away cluster)' if cluster else 'shared SQLite file'}; artifacts in a "
            "bucket (rclone serve s3), each replica its own cache; "
            f"{os.cpu_count()} CPU(s); {args.clients} client processes; {args.rows} row(s) per Predict; "
            f"{args.seconds:.0f} s per run"
        )
        one = measure([replicas[0].target], args.clients, args.seconds, args.rows)
        two = measure([r.target for r in replicas], args.clients, args.seconds, args.rows)
        print(f"{'replicas':>8}  {'Predict/s':>10}  {'ratio':>6}")
        print(f"{1:>8}  {one:>10.0f}  {1.0:>6.2f}")
        print(f"{2:>8}  {two:>10.0f}  {two / one:>6.2f}")
    finally:
        for replica in replicas:
            if replica.process is not None:
                replica.kill()
        if cluster:
            cluster.stop()
        s3.kill()
    if args.no_object_store:
        return 0
    print()
    return object_store.main(["--out", str(args.out)] if args.out else [])


if __name__ == "__main__":
    sys.exit(main())
