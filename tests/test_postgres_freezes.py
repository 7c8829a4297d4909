"""Every registry call bounded while PostgreSQL is frozen with SIGSTOP, under Predict load (issue 24, item 2)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.waiting import wait_until
from predserve.client.library import PredserveClientError
from tests.partitions import replica_with_iris
from tests.postgres_cluster import PostgresCluster
from tests.support import ServerProcess, iris_rows
from tests.test_postgres_outage import (
    RECOVERY_WAIT,
    own_cluster,
    served,
    served_by_every_worker,
    train,
    train_or_none,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
__all__ = ["own_cluster"]  # a fixture, used by name

REGISTRY_TIMEOUT = 2.0
SLACK = 1.0


class PredictLoad:
    """Predicts on fresh connections from a thread of its own, counting anything but the expected set's answer."""

    def __init__(self, replica: ServerProcess, expected: int) -> None:
        self.replica, self.expected = replica, expected
        self.answered, self.wrong = 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PredictLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            got = served(self.replica)
            if got == self.expected:
                self.answered += 1
            else:
                self.wrong.append(got)


def timed_code(call: Callable[[], object]) -> tuple[str, float]:
    began = time.monotonic()
    try:
        call()
        code = "OK"
    except PredserveClientError as exc:
        code = exc.code.name
    return code, time.monotonic() - began


@pytest.mark.parametrize("pause_seconds", [10, 30])
def test_every_registry_call_is_bounded_while_the_database_is_frozen(
    own_cluster: Callable[..., PostgresCluster],
    reap: Callable[[ServerProcess], ServerProcess],
    tmp_path: Path,
    pause_seconds: int,
) -> None:
    cluster, url, replica = replica_with_iris(own_cluster, reap, tmp_path, workers=2)
    names, rows = iris_rows()
    first, current = train(replica), train(replica)
    wait_until(lambda: served_by_every_worker(replica, current), RECOVERY_WAIT, f"both workers to serve {current}")
    generous = 20.0  # each call's own deadline: the bound must come from the server, not from the client
    results: list[tuple[str, str, float]] = []
    with PredictLoad(replica, current) as load, replica.client(max_attempts=1) as client:
        calls: dict[str, Callable[[], object]] = {
            "ListPredictionSets": lambda: client.list_prediction_sets("iris_classifier", timeout=generous),
            "Promote": lambda: client.promote(first, timeout=generous),
            "Train": lambda: client.train("iris_classifier", "iris", "logistic_regression", timeout=generous),
            "IngestHistory": lambda: client.ingest("iris", rows[:5], names, timeout=generous),
        }
        cluster.freeze()
        try:
            frozen_at = time.monotonic()
            while time.monotonic() - frozen_at < pause_seconds - REGISTRY_TIMEOUT - SLACK:
                for name, call in calls.items():
                    results.append((name, *timed_code(call)))
                assert client.health() == "SERVING"
        finally:
            cluster.thaw()
        answered_in_pause = load.answered
    print("\n".join(f"{name:20s} {code:12s} {seconds:.2f}s" for name, code, seconds in results))
    assert {name for name, _, _ in results} == set(calls)
    assert all(code == "UNAVAILABLE" for _, code, _ in results), results
    assert max(seconds for _, _, seconds in results) < REGISTRY_TIMEOUT + SLACK, results
    assert load.wrong == [] and answered_in_pause > 0  # Predict answered from memory all along
    after = wait_until(lambda: train_or_none(replica), RECOVERY_WAIT, "a Train once PostgreSQL runs again")
    assert after > current


# Where in a Train PostgreSQL is frozen, as fractions of how long one takes: the data load, the fit, the artifact's
# write and proof, the insert and the commit of the set.
