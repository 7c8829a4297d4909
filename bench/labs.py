"""The benchmark's models and data: predserve databases trained through predserve's own API.

Four labs, each a database and a models directory in a temporary directory:
- `twenty`: 20 model types (10 iris logistic regressions, 9 breast_cancer 100-tree forests, 1 breast_cancer
  HistGradientBoostingClassifier); the load scenarios use the first of each, and it is the 20-model start-up and
  memory lab. MLServer serves its very artifacts.
- `one`: one breast_cancer forest, for start-up with a single model.
- `empty`: no model, the idle server of the memory target.
- `train`: a 12,500-row synthetic dataset; Train fits a 100-tree forest on 10,000 rows (20% held out).
- `typed`: a churn table of 3 number and 2 string columns with empty cells (issue 23), and two sets trained on
  it: imputer + scaler + one-hot + LogisticRegression, and HistGradientBoosting. MLServer serves them too.
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
from typing import Any

import numpy as np

from harness.launcher import ServerProcess
from predserve.client.library import PredserveClient

logger = logging.getLogger(__name__)

IRIS_MODEL = "iris_lr_01"
FOREST_MODEL = "bc_forest_01"
HGB_MODEL = "bc_hgb_01"
TRAIN_ROWS = 12_500  # the Train scenario fits on 80% of them: 10,000 rows
TRAIN_FEATURES = 20
TYPED_DATASET = "churn"
TYPED_LR_MODEL = "churn_lr"
TYPED_HGB_MODEL = "churn_hgb"
TYPED_ROWS = 5_000


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


def churn_frame(rows: int, seed: int) -> Any:
    """3 number and 2 string columns, a number or a string missing in about one row in ten, and `churned`."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "income": rng.normal(50, 15, rows).round(2),
            "tenure": rng.integers(0, 120, rows).astype(float),
            "plan": pd.Series(rng.choice(["basic", "pro", "team"], rows), dtype=object),
            "country": pd.Series(rng.choice(["fr", "de", "us", "jp"], rows), dtype=object),
        }
    )
    frame.loc[::7, "income"] = np.nan
    frame.loc[::13, "plan"] = np.nan
    noise = rng.random(rows) < 0.1
    frame["churned"] = (((frame["plan"] == "basic") & (frame["age"] > 40)) | (frame["tenure"] < 12) | noise).astype(int)
    return frame


def typed_request_frame(rows: int) -> Any:
    """What callers send the typed sets: a missing income in one row in seven, an unseen country in one in five
    (every string present: a BYTES tensor has no missing element, in MLServer's codec as in Triton's)."""
    frame = churn_frame(rows, seed=99).drop(columns="churned")
    frame["plan"] = frame["plan"].fillna("pro")
    frame.loc[::5, "country"] = "nz"
    return frame


class Labs:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="predserve-bench-"))
        self.twenty = Lab("twenty", self.root / "twenty")
        self.one = Lab("one", self.root / "one")
        self.empty = Lab("empty", self.root / "empty")
        self.train = Lab("train", self.root / "train")
        self.typed = Lab("typed", self.root / "typed")

    def prepare(self) -> None:
        for lab in (self.twenty, self.one, self.empty, self.train, self.typed):
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
        with serving(self.typed.server()) as client:
            client.ingest_table(TYPED_DATASET, churn_frame(TYPED_ROWS, seed=1), "churned")
            client.train(TYPED_LR_MODEL, TYPED_DATASET, "logistic_regression", random_seed=1)
            client.train(TYPED_HGB_MODEL, TYPED_DATASET, "hist_gradient_boosting", random_seed=1)
        logger.info("labs ready under %s", self.root)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _ingest(client: PredserveClient, dataset: str) -> None:
    names, rows = _builtin(dataset)
    client.ingest(dataset, rows, names)
