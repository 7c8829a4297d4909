"""A PostgreSQL registry that goes away and comes back, and one with no connection slot left.

Each test runs a cluster of its own, which it stops (pg_ctl stop -m fast, as an outage or a restart would)
and starts again on the same port, without disturbing the cluster the other tests share. During the outage
admin calls fail fast with UNAVAILABLE and Predict answers from memory; within RECOVERY_SECONDS of PostgreSQL
accepting connections again, Trains work and live reload follows a promote, on every replica and worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from harness.waiting import wait_until
from predserve.client.library import PredserveClientError
from tests.postgres_cluster import Databases, PostgresCluster, find_bindir
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RECOVERY_SECONDS = 2.0  # what the README promises
RECOVERY_WAIT = 3.0  # a little more, for a loaded test machine
FAIL_FAST_SECONDS = 1.5  # well under the 5 s busy timeout a pool would have waited
POOL_SIZE = 3


@pytest.fixture
def own_cluster() -> Iterator[Callable[..., PostgresCluster]]:
    """Starts clusters of this test's own (it may stop them); skipped without PostgreSQL, failed in CI."""
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (no initdb found: apt-get install postgresql), so it cannot be stopped"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must run every test: {message}")
        pytest.skip(message)
    clusters: list[PostgresCluster] = []

    def start(**settings: Any) -> PostgresCluster:
        cluster = PostgresCluster(bindir, **settings).start()
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()


def start_replica(
    reap: Callable[[ServerProcess], ServerProcess], root: Path, name: str, url: str, workers: int = 1
) -> ServerProcess:
    workdir = root / name
    workdir.mkdir()
    # Polling every 60 s: a replica that follows a promote within seconds was told by its LISTEN connection.
    args = ["--reload-interval", "60", "--workers", str(workers), "--db-pool-size", str(POOL_SIZE)]
    return reap(ServerProcess(workdir, db=url, models_dir=root / "shared", extra_args=args)).start()


def served(replica: ServerProcess) -> int:
    try:
        with replica.client(max_attempts=1) as client:
            return client.predict("iris_classifier", IRIS_PROBES).prediction_set_id
    except PredserveClientError:
        return 0


def served_by_every_worker(replica: ServerProcess, set_id: int) -> bool:
    # Each new channel lands on one of the workers (SO_REUSEPORT): several in a row reach both.
    return all(served(replica) == set_id for _ in range(8))


def train(replica: ServerProcess) -> int:
    with replica.client(max_attempts=1) as client:
        return client.train("iris_classifier", "iris", "logistic_regression").prediction_set_id


def train_or_none(replica: ServerProcess) -> int | None:
    try:
        return train(replica)
    except PredserveClientError as exc:
        assert exc.code is grpc.StatusCode.UNAVAILABLE, exc.details
        return None


@pytest.mark.parametrize("outage_seconds", [5, 60])
def test_replicas_recover_within_seconds_of_the_database_returning(
    own_cluster: Callable[..., PostgresCluster],
    reap: Callable[[ServerProcess], ServerProcess],
    tmp_path: Path,
    outage_seconds: int,
) -> None:
    cluster = own_cluster()
    url = cluster.create_database()
    a = start_replica(reap, tmp_path, "a", url, workers=2)
    b = start_replica(reap, tmp_path, "b", url)
    names, rows = iris_rows()
    with a.client() as client:
        client.ingest("iris", rows, names)
    first = train(a)
    wait_until(lambda: served(b) == first, 10, f"B to serve set {first}")

    cluster.pause()
    outage_started = time.monotonic()
    time.sleep(min(1.0, outage_seconds / 2))
    for replica in (a, b):
        began = time.monotonic()
        with replica.client(max_attempts=1) as client, pytest.raises(PredserveClientError) as refused:
            client.train("iris_classifier", "iris", "logistic_regression")
        assert time.monotonic() - began < FAIL_FAST_SECONDS
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        assert f"the registry database postgresql://predserve@127.0.0.1:{cluster.port}/" in refused.value.details
        assert "cannot be reached" in refused.value.details
        assert served(replica) == first  # Predict answers from memory
    time.sleep(max(0.0, outage_seconds - (time.monotonic() - outage_started)))

    cluster.resume()
    back = time.monotonic()
    trained_on_a = wait_until(lambda: train_or_none(a), RECOVERY_WAIT, "a Train on A after the outage")
    train_seconds = time.monotonic() - back
    trained_on_b = wait_until(lambda: train_or_none(b), RECOVERY_WAIT, "a Train on B after the outage")
    wait_until(lambda: served_by_every_worker(a, trained_on_b), RECOVERY_WAIT, f"A to follow B's set {trained_on_b}")
    follow_seconds = time.monotonic() - back

    with b.client() as client:  # a promote on one replica, served by every worker of the other
        client.promote(trained_on_a)
    promoted = time.monotonic()
    wait_until(lambda: served_by_every_worker(a, trained_on_a), RECOVERY_WAIT, f"A to serve promoted {trained_on_a}")
    print(
        f"outage {outage_seconds}s: first Train {train_seconds:.2f}s after PostgreSQL accepted connections, "
        f"both replicas trained and A followed B {follow_seconds:.2f}s after, promote followed in "
        f"{time.monotonic() - promoted:.2f}s"
    )


def test_no_free_connection_slot_stops_start_up_with_one_line(
    own_cluster: Callable[..., PostgresCluster], reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    cluster = own_cluster(max_connections=5)
    url = cluster.create_database()
    held = [psycopg.connect(cluster.url) for _ in range(5)]  # every slot, the superuser's reserved ones too
    try:
        replica = reap(ServerProcess(tmp_path, db=url, extra_args=["--db-pool-size", "2"]))
        replica.start(wait=False)
        assert replica.wait_exit(60) == 1
    finally:
        for conn in held:
            conn.close()
    lines = [line for line in replica.log().splitlines() if "connection slot" in line]
    assert len(lines) == 1
    assert lines[0].endswith(
        f"predserve cannot start: the registry database postgresql://predserve@127.0.0.1:{cluster.port}/"
        f"{url.rsplit('/', 1)[1]} has no free connection slot (max_connections reached): raise max_connections "
        "or lower --db-pool-size (each serving process uses up to 3)"
    )


def test_idle_connections_per_serving_process_follow_the_readme(
    postgres_cluster: Databases,
    postgres_url: str,
    reap: Callable[[ServerProcess], ServerProcess],
    tmp_path: Path,
) -> None:
    a = start_replica(reap, tmp_path, "a", postgres_url, workers=2)
    b = start_replica(reap, tmp_path, "b", postgres_url)
    names, rows = iris_rows()
    with a.client() as client:
        client.ingest("iris", rows, names)
    trained = train(a)
    wait_until(lambda: served(b) == trained, 10, f"B to serve set {trained}")
    database = postgres_url.rsplit("/", 1)[1]

    def connections() -> int:
        with psycopg.connect(postgres_cluster.url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'predserve'",
                (database,),
            ).fetchone()
        assert row is not None
        return int(row[0])

    serving_processes = 2 + 1  # A's two workers (its parent holds none once they are forked) and B
    # README: each serving process holds its LISTEN connection and 1 to --db-pool-size pooled ones, so
    # at most replicas x workers x (--db-pool-size + 1) in all.
    idle = connections()
    print(f"idle: {idle} connections for {serving_processes} serving processes")
    assert serving_processes * 2 <= idle <= serving_processes * (POOL_SIZE + 1)
