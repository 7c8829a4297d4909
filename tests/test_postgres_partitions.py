"""Replicas through partitions (issue 24): a PostgreSQL registry that is stopped, frozen or killed while replicas
start, serve and train.

Each test runs a cluster of its own (tests/test_postgres_outage.py's `own_cluster`), which it may stop and start
again on the same port without disturbing the cluster the other tests share.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.waiting import wait_until
from predserve.client.library import PredserveClientError
from tests.partitions import replica_with_iris, train_reporting
from tests.postgres_cluster import PostgresCluster
from tests.support import IRIS_PROBES, PROJECT_ROOT, ServerProcess, iris_rows
from tests.test_postgres_outage import (
    RECOVERY_WAIT,
    own_cluster,
    served,
    start_replica,
    train,
)
from tests.test_worker_sync import _children, predict_over_a_new_connection

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
__all__ = ["own_cluster"]  # a fixture, used by name

OUTAGE_AT_START_SECONDS = 4.0


def replica_started_in_an_outage(
    reap: Callable[[ServerProcess], ServerProcess], root: Path, url: str
) -> tuple[ServerProcess, Path]:
    workdir = root / "late"
    workdir.mkdir()
    late = reap(ServerProcess(workdir, db=url, models_dir=root / "shared", extra_args=["--reload-interval", "60"]))
    late.start(wait=False)
    return late, workdir / "server.port"


def test_a_replica_started_during_an_outage_waits_then_serves_once_the_database_returns(
    own_cluster: Callable[..., PostgresCluster], reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    cluster, url, first_replica = replica_with_iris(own_cluster, reap, tmp_path)
    trained = train(first_replica)
    first_replica.stop()

    cluster.pause()
    late, port_file = replica_started_in_an_outage(reap, tmp_path, url)
    late.wait_for_log("waiting for the registry database before listening", 30)
    time.sleep(OUTAGE_AT_START_SECONDS)
    assert late.process is not None and late.process.poll() is None, f"it exited:\n{late.log()}"
    assert not port_file.exists(), "it listens before it could load anything"

    cluster.resume()
    wait_until(port_file.exists, RECOVERY_WAIT, "the late replica to listen once PostgreSQL is back")
    late.port = int(port_file.read_text())
    assert wait_until(lambda: served(late) == trained, RECOVERY_WAIT, f"the late replica to serve set {trained}")
    assert "cannot start" not in late.log()


def test_a_replica_waiting_for_the_database_stops_on_sigterm(
    own_cluster: Callable[..., PostgresCluster], reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    cluster = own_cluster()
    url = cluster.create_database()
    cluster.pause()
    late, port_file = replica_started_in_an_outage(reap, tmp_path, url)
    late.wait_for_log("waiting for the registry database before listening", 30)
    assert late.process is not None
    late.process.send_signal(signal.SIGTERM)
    assert late.wait_exit(timeout=10) == 0
    assert "stopped while waiting for the registry database" in late.log() and not port_file.exists()


# The default --registry-timeout, as the README states it, and what a loaded 2-core test machine adds to it.
def pinned_answer(replica: ServerProcess, set_id: int) -> str:
    """How a replica answers a pinned Predict: the set's id, or the status code's name."""
    try:
        with replica.client(max_attempts=1) as client:
            return str(client.predict("iris_classifier", IRIS_PROBES, prediction_set_id=set_id).prediction_set_id)
    except PredserveClientError as exc:
        return exc.code.name


def test_retention_reaches_every_replica_that_cached_the_pinned_set(
    own_cluster: Callable[..., PostgresCluster], reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    cluster = own_cluster()
    url = cluster.create_database()
    replicas = [start_replica(reap, tmp_path, name, url) for name in ("a", "b", "c")]
    names, rows = iris_rows()
    with replicas[0].client() as client:
        client.ingest("iris", rows, names)
    pinned, _, _ = (train(replicas[0]) for _ in range(3))
    assert [pinned_answer(replica, pinned) for replica in replicas] == [str(pinned)] * 3  # cached everywhere
    with replicas[0].client() as client:
        collected = client.garbage_collect(keep=1)
    assert pinned in [s.id for s in collected.collected]

    def answers() -> list[str]:
        return [pinned_answer(replica, pinned) for replica in replicas]

    wait_until(lambda: answers() == ["FAILED_PRECONDITION"] * 3, RECOVERY_WAIT, "every replica to refuse the set")
    for _ in range(5):  # and it stays so, whichever replica is asked
        assert answers() == ["FAILED_PRECONDITION"] * 3


@contextlib.contextmanager
def bind_mounted(directory: Path) -> Iterator[Callable[[str], None]]:
    """The directory bind-mounted onto itself, so that it can be remounted read-only under a running server."""
    mounted = subprocess.run(["mount", "--bind", str(directory), str(directory)], capture_output=True, text=True)
    if mounted.returncode != 0:
        message = f"cannot bind-mount here ({mounted.stderr.strip()}): the read-only models directory is not tested"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must run every test: {message}")
        pytest.skip(message)

    def remount(mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode},bind", str(directory)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", str(directory)], check=False)


def test_a_read_only_models_directory_is_a_precise_status(
    own_cluster: Callable[..., PostgresCluster], reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    cluster, url, replica = replica_with_iris(own_cluster, reap, tmp_path)
    current = train(replica)
    models = tmp_path / "shared"
    with bind_mounted(models) as remount, replica.client(max_attempts=1) as client:
        remount("ro")
        wait_until(lambda: client.health("predserve.train") == "NOT_SERVING", 10, "health to say it cannot train")
        with pytest.raises(PredserveClientError) as refused:
            client.train("iris_classifier", "iris", "logistic_regression")
        assert refused.value.code.name == "UNAVAILABLE"
        assert f"models directory {models} is on a read-only file system" in refused.value.details
        assert client.health() == "SERVING" and served(replica) == current  # it still serves
        remount("rw")
        wait_until(lambda: client.health("predserve.train") == "SERVING", 10, "health to say it can train again")
        assert train(replica) > current
    assert "Traceback" not in replica.log()


def files_in(models: Path) -> set[str]:
    return {entry.name for entry in models.iterdir() if entry.is_file()}


def recorded_files(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT model_artifact_path, runtime_path FROM prediction_sets").fetchall()
    return {name for row in rows for name in row if name}


def test_files_of_trains_the_database_crash_cut_short_are_deleted_once_it_returns(
    own_cluster: Callable[..., PostgresCluster], reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    cluster, url, replica = replica_with_iris(
        own_cluster, reap, tmp_path, durable=True
    )  # a commit acknowledged before the kill survives it
    train(replica)
    models = tmp_path / "shared"
    stop = threading.Event()
    failures: list[str] = []

    def keep_training() -> None:
        while not stop.is_set():
            outcome: dict[str, object] = {}
            train_reporting(replica, outcome)
            if "code" in outcome:
                failures.append(str(outcome["code"]))

    trainers = [threading.Thread(target=keep_training) for _ in range(6)]
    for trainer in trainers:
        trainer.start()
    time.sleep(1.5)
    cluster.kill()
    time.sleep(1.0)
    stop.set()
    for trainer in trainers:
        trainer.join(timeout=60)
    left = files_in(models)
    cluster.resume()
    try:
        wait_until(lambda: files_in(models) == recorded_files(url), 10, "the files of uncommitted Trains to go")
    except TimeoutError:
        raise AssertionError(f"files {sorted(files_in(models))}, recorded {sorted(recorded_files(url))}") from None
    print(
        f"{len(failures)} Trains failed; {len(left - recorded_files(url))} files left by them until PostgreSQL returned"
    )
    assert failures, "no Train was cut short"
    assert not [name for name in files_in(models) if name.endswith(".unsettled")]
    result = subprocess.run(
        [sys.executable, "-m", "predserve.server", "recover", "--db", url, "--models-dir", str(models)],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert result.stdout.strip() == "0 of 0 orphan artifact(s) recovered", result.stdout + result.stderr


def health_over_a_new_connection(target: str) -> str:
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_a_worker_respawned_during_an_outage_takes_no_connection_until_it_has_synced(
    own_cluster: Callable[..., PostgresCluster], reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    cluster, url, replica = replica_with_iris(own_cluster, reap, tmp_path, workers=2)
    current = train(replica)
    # The worker that did not train learns of the set by NOTIFY; frozen before it did, it would rightly go on
    # answering what it knew, which is not what this test is about.
    wait_until(
        lambda: all(
            predict_over_a_new_connection(replica.target, "iris_classifier").set_id == current for _ in range(8)
        ),
        30,
        "both workers to serve the new set",
    )
    assert replica.process is not None
    parent = replica.process.pid
    ready = replica.log().count("predserve ready on")
    cluster.pause()
    victim = _children(parent)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in _children(parent) and len(_children(parent)) == 2, 30, "a replacement worker")
    replica.wait_for_log("not listening until this process has synced with the database", 30)
    answers = [predict_over_a_new_connection(replica.target, "iris_classifier") for _ in range(40)]
    statuses = [health_over_a_new_connection(replica.target) for _ in range(20)]
    assert [a.set_id for a in answers] == [current] * 40, [a for a in answers if a.set_id != current]
    assert statuses == ["SERVING"] * 20
    cluster.resume()
    wait_until(lambda: replica.log().count("predserve ready on") > ready, RECOVERY_WAIT, "the replacement to listen")
    answers = [predict_over_a_new_connection(replica.target, "iris_classifier") for _ in range(20)]
    assert [a.set_id for a in answers] == [current] * 20
