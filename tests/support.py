"""Test helpers: the real server process with a client attached, and small datasets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.launcher import PROJECT_ROOT
from harness.launcher import ServerProcess as _ServerProcess
from predserve.client.library import PredserveClient

__all__ = [
    "PROJECT_ROOT",
    "ServerProcess",
    "IRIS_PROBES",
    "iris_rows",
    "diabetes_rows",
    "cli",
    "cli_json",
    "run_triton_check",
]


class ServerProcess(_ServerProcess):
    def client(self, **kwargs: object) -> PredserveClient:
        return PredserveClient(self.target, **kwargs)  # type: ignore[arg-type]


def iris_rows() -> tuple[list[str], list[tuple[list[float], int]]]:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    return list(bunch.feature_names), [
        (list(map(float, x)), int(y)) for x, y in zip(bunch.data, bunch.target, strict=True)
    ]


def diabetes_rows() -> list[tuple[list[float], float]]:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    return [(list(map(float, x)), float(y)) for x, y in zip(bunch.data, bunch.target, strict=True)]


# Every migration's number, in order: the one list the tests compare what was applied with.
EVERY_MIGRATION = list(range(1, 12))

IRIS_PROBES = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.3, 2.5, 4.9, 1.5]]


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`predserve --target <server> ARGS` as a user runs it, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "predserve.client", "--target", server.target, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_json(server: ServerProcess, *args: str) -> Any:
    result = cli(server, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_triton_check(script: Path, target: str, expected: dict[str, Any], workdir: Path) -> None:
    """Runs a stock-tritonclient check script in a process of its own against `target`, handing it the answers
    the test computed; fails with its output unless every check passed."""
    expected_path = workdir / "expected.json"
    expected_path.write_text(json.dumps(expected))
    completed = subprocess.run(
        [sys.executable, str(script), "--target", target, "--expected", str(expected_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    assert completed.returncode == 0, report
    assert "0 failed" in completed.stdout, report
