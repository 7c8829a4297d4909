"""kill -9 at random moments while Trains keep coming, then restart and check the invariant, a few times.

Bounded: PREDSERVE_KILL_ITERATIONS restarts per seed (default 3), each kill within 1.5 s of the first
Train. The seed is in the test id, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from predserve.client.library import PredserveClientError
from predserve.protos import predserve_pb2 as pb
from tests.faults.baseline import CLASSIFIER, FOREST, Baseline, Launch
from tests.invariants import check_invariants
from tests.support import ServerProcess

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # several kills and restarts a test

ITERATIONS = int(os.environ.get("PREDSERVE_KILL_ITERATIONS", "3"))
MAX_KILL_DELAY = 1.5


class TrainLoop(threading.Thread):
    """Sends Trains one after another, alternating the two model types, until the server dies."""

    def __init__(self, server: ServerProcess, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.seeds = [rng.randrange(1, 10_000) for _ in range(1000)]
        self.acknowledged: list[pb.TrainResponse] = []
        self.failure: PredserveClientError | None = None
        self.started_training = threading.Event()

    def run(self) -> None:
        with self.server.client() as client:
            for i, seed in enumerate(self.seeds):
                self.started_training.set()
                try:
                    if i % 2:
                        answer = client.train(
                            CLASSIFIER, dataset="iris", algorithm="logistic_regression", random_seed=seed
                        )
                    else:
                        answer = client.train(
                            FOREST,
                            dataset="iris",
                            algorithm="random_forest",
                            params={"n_estimators": 20},
                            random_seed=seed,
                        )
                except PredserveClientError as exc:
                    self.failure = exc
                    return
                self.acknowledged.append(answer)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_kills_during_trains(launch: Launch, baseline: Baseline, tmp_path: Path, seed: int) -> None:
    """SIGKILL at random moments during back-to-back Trains; invariant checked after every restart."""
    rng = random.Random(seed)
    server = launch(baseline.copy(tmp_path))
    acknowledged: list[pb.TrainResponse] = list(baseline.trained)
    for _ in range(ITERATIONS):
        server.start()
        check_invariants(server.db, server.models_dir, acknowledged=acknowledged, server=server)
        loop = TrainLoop(server, rng)
        loop.start()
        assert loop.started_training.wait(timeout=10)
        time.sleep(rng.uniform(0.0, MAX_KILL_DELAY))
        server.kill()
        loop.join(timeout=30)
        assert not loop.is_alive()
        assert loop.failure is not None and loop.failure.code.name == "UNAVAILABLE", loop.failure
        acknowledged += loop.acknowledged

    server.start()
    snapshot = check_invariants(server.db, server.models_dir, acknowledged=acknowledged, server=server)
    server.kill()
    assert len(acknowledged) > len(baseline.trained)  # the kills did interrupt a running stream of Trains
    assert len(snapshot.rows) >= len(acknowledged)
