"""Shared fixtures: each test gets its own database and models directory under tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.baseline import Baseline, train_baseline
from tests.support import ServerProcess, iris_rows


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path).start()
    yield process
    process.kill()


@pytest.fixture(scope="module")
def trained_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server shared by a module's read-only tests, with iris ingested and two models trained."""
    process = ServerProcess(tmp_path_factory.mktemp("trained")).start()
    with process.client() as client:
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
        client.train("iris_forest", dataset="iris", algorithm="random_forest", params={"n_estimators": 20})
    yield process
    process.kill()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """Trained once per run; tests that break it work on a copy (Baseline.copy)."""
    return train_baseline(tmp_path_factory.mktemp("fault-baseline"))
