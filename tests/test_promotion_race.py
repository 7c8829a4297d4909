"""Promote-if-better raced by two replicas: the comparison and the switch are one transaction, so the better
set always ends current, and a set is told `promoted=True` only if it was current when it committed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from predserve.protos import predserve_pb2 as pb
from tests.support import ServerProcess, iris_rows

pytestmark = pytest.mark.slow

PAIRS = 30
BETTER, WORSE = "1.0", "0.03"  # C of a LogisticRegression on iris: accuracy 0.93 and 0.83 on the hold-out


@pytest.fixture
def two_replicas(tmp_path: Path, postgres_url: str) -> Iterator[list[ServerProcess]]:
    shared = tmp_path / "shared-artifacts"
    replicas = [
        ServerProcess(tmp_path / name, db=postgres_url, models_dir=shared, extra_args=["--reload-interval", "60"])
        for name in ("a", "b")
    ]
    for replica in replicas:
        replica.workdir.mkdir()
        replica.start()
    names, rows = iris_rows()
    with replicas[0].client() as client:
        client.ingest("iris", rows, names)
    yield replicas
    for replica in replicas:
        replica.kill()


def current_id(url: str, model_type: str) -> int:
    with psycopg.connect(url) as conn:
        return int(
            conn.execute(
                "SELECT id FROM prediction_sets WHERE model_type = %s AND is_current", (model_type,)
            ).fetchone()[0]
        )


def race(clients: list, model_type: str, better_on: int) -> dict[str, pb.TrainResponse]:
    """Both replicas train `model_type` at once, one the better set and the other the worse."""
    answers: dict[str, pb.TrainResponse] = {}
    start = threading.Barrier(2)

    def train(index: int, c: str) -> None:
        start.wait()
        answers[c] = clients[index].train(
            model_type, dataset="iris", algorithm="logistic_regression", params={"C": c}, promotion="if-better"
        )

    threads = [
        threading.Thread(target=train, args=(better_on, BETTER)),
        threading.Thread(target=train, args=(1 - better_on, WORSE)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def test_the_better_set_always_ends_current(two_replicas: list[ServerProcess], postgres_url: str) -> None:
    clients = [replica.client() for replica in two_replicas]
    try:
        for pair in range(PAIRS):
            model_type = f"raced_{pair}"  # no current set yet: the case where both used to read "none"
            # Alternate which replica trains the better set, so that either may commit first.
            answers = race(clients, model_type, better_on=pair % 2)
            better, worse = answers[BETTER], answers[WORSE]
            assert better.metrics["accuracy"] > worse.metrics["accuracy"]
            assert current_id(postgres_url, model_type) == better.prediction_set_id, (pair, better, worse)
            assert better.promoted
            if worse.promoted:
                # The worse set committed first and really was current; the better one compared with it.
                assert f"of current set {worse.prediction_set_id}" in better.promotion_reason, better
            else:
                assert f"of current set {better.prediction_set_id}" in worse.promotion_reason, worse
    finally:
        for client in clients:
            client.close()
