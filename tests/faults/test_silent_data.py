"""Data the server used to take silently is refused over gRPC with INVALID_ARGUMENT, and nothing is stored."""

from __future__ import annotations

import pytest

from predserve.client.library import InvalidArgumentError
from tests.support import ServerProcess, iris_rows

pytestmark = [pytest.mark.faults]


def test_rows_with_other_feature_names_are_refused(server: ServerProcess) -> None:
    """IngestHistory into a dataset with renamed, repeated or empty feature names: INVALID_ARGUMENT, no row added."""
    names, rows = iris_rows()
    with server.client() as client:
        assert client.ingest("iris", rows, names).total_rows == len(rows)
        for other in (list(reversed(names)), [names[0]] * 4, ["", *names[1:]]):
            with pytest.raises(InvalidArgumentError):
                client.ingest("iris", rows[:10], other)
        assert client.ingest("iris", rows[:10], names).total_rows == len(rows) + 10


def test_a_non_finite_hyper_parameter_is_refused(server: ServerProcess) -> None:
    """Train with C=1e999 (JSON Infinity once stored): INVALID_ARGUMENT naming the parameter, nothing recorded."""
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        for text in ("1e999", "inf", "nan"):
            with pytest.raises(InvalidArgumentError, match=r"\bC\b"):
                client.train("m", dataset="iris", algorithm="logistic_regression", params={"C": text})
        assert [m.model_type for m in client.list_models().models] == []
