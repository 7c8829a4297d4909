"""What the partition tests (tests/test_postgres_*.py of issue 24) share: a replica on a cluster of the test's own,
with the iris dataset, and a Train reporting its outcome."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from predserve.client.library import PredserveClientError
from tests.postgres_cluster import PostgresCluster
from tests.support import ServerProcess, iris_rows
from tests.test_postgres_outage import start_replica


def replica_with_iris(
    own_cluster: Callable[..., PostgresCluster],
    reap: Callable[[ServerProcess], ServerProcess],
    root: Path,
    workers: int = 1,
    **cluster_settings: Any,
) -> tuple[PostgresCluster, str, ServerProcess]:
    """A cluster of the test's own, a database on it, and replica "a" serving it with the iris dataset ingested."""
    cluster = own_cluster(**cluster_settings)
    url = cluster.create_database()
    replica = start_replica(reap, root, "a", url, workers=workers)
    names, rows = iris_rows()
    with replica.client() as client:
        client.ingest("iris", rows, names)
    return cluster, url, replica


FREEZE_AT = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
TRAIN_DEADLINE = 3.0
FROZEN_FOR = 6.0
ALGORITHM = "random_forest"  # long enough (a few hundred ms with its compiled form) to be frozen at any stage


def train_reporting(replica: ServerProcess, outcome: dict[str, object]) -> None:
    try:
        with replica.client(max_attempts=1) as client:
            answer = client.train("iris_classifier", "iris", ALGORITHM, timeout=TRAIN_DEADLINE)
        outcome["set"] = answer.prediction_set_id
    except PredserveClientError as exc:
        outcome["code"] = exc.code.name


def registry_answers(replica: ServerProcess) -> bool:
    try:
        with replica.client(max_attempts=1) as client:
            client.list_prediction_sets("iris_classifier", timeout=5)
        return True
    except PredserveClientError:
        return False
