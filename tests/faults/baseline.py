"""The trained baseline the fault tests break: a stopped server's database and models, copied afresh per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from predserve.protos import predserve_pb2 as pb
from tests.support import ServerProcess, iris_rows

FOREST = "iris_forest"  # the model type the tests break: two sets, so it has something to fall back to
CLASSIFIER = "iris_classifier"  # the other model type, which must keep serving
SMALL_FOREST = {"n_estimators": 5, "max_depth": 3}

# Builds a ServerProcess that the `launch` fixture kills after the test, whatever happened.
Launch = Callable[..., ServerProcess]


@dataclass(frozen=True)
class Baseline:
    """iris_forest sets 1 and 3 (current), iris_classifier set 2; iris ingested as dataset `iris`."""

    workdir: Path
    trained: tuple[pb.TrainResponse, ...]

    def copy(self, destination: Path) -> Path:
        """A fresh copy of the database and models directory, as if the project were moved there."""
        workdir = destination / "copy"
        shutil.copytree(self.workdir, workdir, ignore=shutil.ignore_patterns("server.log", "server.port"))
        return workdir

    def set_id(self, model_type: str, nth: int = -1) -> int:
        return [t.prediction_set_id for t in self.trained if t.model_type == model_type][nth]


def train_baseline(workdir: Path) -> Baseline:
    server = ServerProcess(workdir).start()
    names, rows = iris_rows()
    try:
        with server.client() as client:
            client.ingest("iris", rows, names)
            trained = (
                client.train(FOREST, dataset="iris", algorithm="random_forest", params=SMALL_FOREST),
                client.train(CLASSIFIER, dataset="iris", algorithm="logistic_regression"),
                client.train(FOREST, dataset="iris", algorithm="random_forest", params=SMALL_FOREST, random_seed=7),
            )
    finally:
        assert server.stop() == 0
    assert [t.prediction_set_id for t in trained] == [1, 2, 3]
    return Baseline(workdir, trained)
