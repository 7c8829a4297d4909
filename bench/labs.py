"""The benchmark's models and data: predserve databases trained through predserve's own API.

Four labs, each a database and a models directory in a temporary directory:
- `twenty`: 20 model types (10 iris logistic regressions, 9 breast_cancer 100-tree forests, 1 breast_cancer
  HistGradientBoostingClassifier); the load scenarios use the first of each, and it is the 20-model start-up and
  memory lab. MLServer serves its very artifacts.
- `one`: one breast_cancer forest, for start-up with a single model.
- `empty`: no model, the idle server of the memory target.
- `train`: a 12,500-row synthetic dataset; Train fits a 100-tree forest on 10,000 rows (20% held out).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.library import PredserveClient
from harness.launcher import ServerProcess

logger = logging.getLogger(__name__)

IRIS_MODEL = "iris_lr_01"
FOREST_MODEL = "bc_forest_01"
HGB_MODEL = "bc_hgb_01"
TRAIN_ROWS = 12_500  # the Train scenario fits on 80% of them: 10,000 rows
TRAIN_FEATURES = 20


@dataclass(frozen=True)
class Lab:
    name: str
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "predictions.db"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def server(self, extra_args: tuple[str, ...] = (), port: int = 0) -> ServerProcess:
        # No live reload: nothing else writes these databases, and its polling would be noise.
        args = ("--reload-interval", "0", *extra_args)
        return ServerProcess(self.root, self.db, self.models_dir, extra_args=args, port=port)

    def artifacts(self) -> dict[str, Path]:
        """Current artifact of every model type, as ListModels reports it."""
        with serving(self.server()) as client:
            listed = client.list_models().models
        return {m.model_type: self.models_dir / m.model_artifact_path for m in listed}


def stop(process: ServerProcess) -> None:
    """SIGTERM and a graceful stop; SIGKILL if it has not stopped within 30 s, so that no run leaves a server."""
    try:
        process.stop(timeout=30)
    except subprocess.TimeoutExpired:
        logger.error(
            "server pid %s ignored SIGTERM for 30 s; killed:\n%s",
            process.process and process.process.pid,
            process.log()[-2000:],
        )
        process.kill()


@contextlib.contextmanager
def serving(process: ServerProcess) -> Iterator[PredserveClient]:
    """A started predserve process and a client to it; SIGTERM on the way out."""
    process.start()
    try:
        with PredserveClient(process.target, train_deadline_seconds=600) as client:
            yield client
    finally:
        stop(process)


def _builtin(name: str) -> tuple[list[str], list[tuple[list[float], int]]]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    rows = [(list(map(float, x)), int(y)) for x, y in zip(bunch.data, bunch.target, strict=True)]
    return [str(n).replace(" ", "_") for n in bunch.feature_names], rows


def _synthetic() -> tuple[list[str], list[tuple[list[float], int]]]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=TRAIN_ROWS, n_features=TRAIN_FEATURES, n_informative=10, random_state=0)
    return [f"f{i}" for i in range(TRAIN_FEATURES)], [(list(map(float, r)), int(t)) for r, t in zip(x, y, strict=True)]


def feature_rows(dataset: str) -> np.ndarray:
    """The features of a dataset, for the requests and the in-process baselines."""
    _, rows = _builtin(dataset)
    return np.asarray([features for features, _ in rows], dtype=np.float64)


class Labs:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="predserve-bench-"))
        self.twenty = Lab("twenty", self.root / "twenty")
        self.one = Lab("one", self.root / "one")
        self.empty = Lab("empty", self.root / "empty")
        self.train = Lab("train", self.root / "train")

    def prepare(self) -> None:
        for lab in (self.twenty, self.one, self.empty, self.train):
            lab.root.mkdir(parents=True, exist_ok=True)
        with serving(self.twenty.server()) as client:
            _ingest(client, "iris")
            _ingest(client, "breast_cancer")
            for index in range(1, 11):
                client.train(f"iris_lr_{index:02d}", "iris", "logistic_regression", random_seed=index)
                if index < 10:  # the twentieth model is the boosting one
                    client.train(f"bc_forest_{index:02d}", "breast_cancer", "random_forest", random_seed=index)
            client.train(HGB_MODEL, "breast_cancer", "hist_gradient_boosting", random_seed=1)
        with serving(self.one.server()) as client:
            _ingest(client, "breast_cancer")
            client.train(FOREST_MODEL, "breast_cancer", "random_forest", random_seed=1)
        with serving(self.train.server()) as client:
            names, rows = _synthetic()
            client.ingest("synthetic", rows, names)
        logger.info("labs ready under %s", self.root)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _ingest(client: PredserveClient, dataset: str) -> None:
    names, rows = _builtin(dataset)
    client.ingest(dataset, rows, names)
