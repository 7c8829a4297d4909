"""Test helpers: the real server process with a client attached, and small datasets."""

from __future__ import annotations

from client.library import PredserveClient
from harness.launcher import PROJECT_ROOT
from harness.launcher import ServerProcess as _ServerProcess

__all__ = ["PROJECT_ROOT", "ServerProcess", "IRIS_PROBES", "iris_rows", "diabetes_rows"]


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


IRIS_PROBES = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.3, 2.5, 4.9, 1.5]]
