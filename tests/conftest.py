"""Shared fixtures: each test gets its own database and models directory under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.baseline import Baseline, train_baseline
from tests.postgres_cluster import Databases, ExistingCluster, PostgresCluster, find_bindir
from tests.support import ServerProcess, iris_rows


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `postgres` every test that needs the cluster, so `-m postgres` and `-m "not postgres"` never drift."""
    for item in items:
        if "postgres_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Databases]:
    """PREDSERVE_TEST_POSTGRES_URL's server, or a throw-away cluster when PostgreSQL is installed.

    Without either the PostgreSQL tests are skipped, except in CI (CI=true), where they fail.
    """
    url = os.environ.get("PREDSERVE_TEST_POSTGRES_URL")
    if url:
        yield ExistingCluster(url)
        return
    bindir = find_bindir()
    if bindir is None:
        message = (
            "PostgreSQL is not installed (no initdb found: apt-get install postgresql, or set "
            "PREDSERVE_TEST_POSTGRES_URL), so the PostgreSQL and multi-replica tests cannot run"
        )
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must run every test: {message}")
        pytest.skip(message)
    cluster = PostgresCluster(bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Databases) -> Iterator[str]:
    """The URL of a new, empty database of its own."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)


@pytest.fixture
def reap() -> Iterator[Callable[[ServerProcess], ServerProcess]]:
    """Registers servers a test starts by hand, so a failed assertion never leaves one running."""
    started: list[ServerProcess] = []

    def register(server: ServerProcess) -> ServerProcess:
        started.append(server)
        return server

    yield register
    for server in started:
        if server.process is not None:
            server.kill()
