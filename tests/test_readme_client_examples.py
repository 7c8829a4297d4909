"""The README's client examples run as written against real servers: each block marked
`<!-- client-example: NAME -->` is run in a process of its own, pointed at the servers by the variables it reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT, ServerProcess, iris_rows

README = PROJECT_ROOT / "docs" / "client.md"
EXAMPLE = re.compile(r"<!-- client-example: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)\n```", re.DOTALL)


def examples() -> dict[str, str]:
    return {m["name"]: m["code"] for m in EXAMPLE.finditer(README.read_text())}


def start_trained(workdir: Path, trainings: int = 1) -> ServerProcess:
    process = ServerProcess(workdir).start()
    with process.client() as client:
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        for _ in range(trainings):
            client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    return process


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two servers with registries of their own: the second trained twice, so its answers name set 2, the
    first's set 1, and an answer says which replica gave it."""
    started = [start_trained(tmp_path_factory.mktemp("replica-1"))]
    try:
        started.append(start_trained(tmp_path_factory.mktemp("replica-2"), trainings=2))
        yield started
    finally:
        for process in started:
            process.kill()


def run_example(name: str, **env: str) -> str:
    # From a folder outside the work tree, like a service's own code: `client` comes from the install.
    result = subprocess.run(
        [sys.executable, "-c", examples()[name]],
        cwd=PROJECT_ROOT.parent,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"the README's {name} example failed:\n{result.stderr}"
    return result.stdout


def test_the_readme_marks_its_client_examples() -> None:
    assert set(examples()) == {"sync", "async", "replicas"}


def test_the_sync_example(replicas: list[ServerProcess]) -> None:
    lines = run_example("sync", PREDSERVE_TARGET=replicas[0].target).splitlines()
    set_id, label, probability = lines[0].split()
    assert (set_id, label) == ("1", "0") and 0.5 < float(probability) <= 1.0
    assert lines[1] == "not served here: NOT_FOUND unknown model type 'churn'"
    assert len(lines) == 2


def test_the_async_example(replicas: list[ServerProcess]) -> None:
    lines = run_example("async", PREDSERVE_TARGET=replicas[0].target).splitlines()
    assert lines == ["[0, 2, 1]", "refused: row 0 has 2 features, expected 4"]


def test_the_replicas_example(replicas: list[ServerProcess]) -> None:
    targets = ",".join(process.target for process in replicas)
    assert run_example("replicas", PREDSERVE_REPLICAS=targets).splitlines() == ["[1, 2]"]
