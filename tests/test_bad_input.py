"""Bad input gets a precise status and a message naming the problem; the server keeps serving."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from predserve.client.library import PredserveClient, PredserveClientError
from predserve.protos import predserve_pb2 as pb
from tests.support import IRIS_PROBES, ServerProcess

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

Call = Callable[[PredserveClient], Any]

CASES: list[tuple[str, Call, grpc.StatusCode, str]] = [
    ("unknown model type", lambda c: c.predict("no_such_model", IRIS_PROBES), NOT_FOUND, "unknown model type"),
    ("too few features", lambda c: c.predict("iris_classifier", [[1.0, 2.0]]), INVALID, "expected 4"),
    ("too many features", lambda c: c.predict("iris_classifier", [[1.0] * 5]), INVALID, "5 features"),
    ("ragged rows", lambda c: c.predict("iris_classifier", [[1.0] * 4, [1.0] * 3]), INVALID, "row 1"),
    ("NaN feature", lambda c: c.predict("iris_classifier", [[math.nan, 1, 1, 1]]), INVALID, "non-finite"),
    ("infinite feature", lambda c: c.predict("iris_classifier", [[1, 1, 1, math.inf]]), INVALID, "non-finite"),
    ("no rows", lambda c: c.predict("iris_classifier", []), INVALID, "no rows"),
    ("empty model type", lambda c: c.predict("", IRIS_PROBES), INVALID, "model_type is required"),
    ("path in model type", lambda c: c.predict("../etc/passwd", IRIS_PROBES), INVALID, "not a valid name"),
    ("missing pinned set", lambda c: c.predict("iris_classifier", IRIS_PROBES, 999), NOT_FOUND, "999"),
    ("negative pinned set", lambda c: c.predict("iris_classifier", IRIS_PROBES, -3), INVALID, "negative"),
    ("set of another type", lambda c: c.predict("iris_forest", IRIS_PROBES, 1), NOT_FOUND, "belongs to"),
    (
        "probabilities of a regressor",
        lambda c: c.predict("diabetes_ridge", [[0.0] * 10], 0, True),
        PRECONDITION,
        "does not give probabilities",
    ),
    ("legacy type without artifact", lambda c: c.predict("legacy_type", [[1.0]]), PRECONDITION, "needs training"),
    ("unknown algorithm", lambda c: c.train("m", "iris", "deep_magic"), INVALID, "unknown algorithm"),
    ("no algorithm for a free name", lambda c: c.train("my_model", "iris"), INVALID, "algorithm is required"),
    ("unknown parameter", lambda c: c.train("m", "iris", "ridge", {"depth": 3}), INVALID, "unknown parameter"),
    (
        "parameter of wrong type",
        lambda c: c.train("m", "iris", "random_forest", {"n_estimators": "many"}),
        INVALID,
        "n_estimators",
    ),
    ("parameter out of range", lambda c: c.train("m", "iris", "ridge", {"alpha": -1}), INVALID, "alpha"),
    ("unknown dataset", lambda c: c.train("m", "nowhere", "ridge"), NOT_FOUND, "nowhere"),
    ("bad dataset name", lambda c: c.train("m", "a/b", "ridge"), INVALID, "dataset"),
    ("too few rows", lambda c: c.train("m", "tiny", "logistic_regression"), PRECONDITION, "too few rows"),
    ("one class only", lambda c: c.train("m", "one_class", "logistic_regression"), PRECONDITION, "too few classes"),
    ("text labels for a regressor", lambda c: c.train("m", "one_class", "ridge"), PRECONDITION, "text labels"),
    ("bad test fraction", lambda c: c.train("m", "iris", "ridge", test_fraction=0.9), INVALID, "test_fraction"),
    ("seed out of range", lambda c: c.train("m", "iris", "ridge", random_seed=2**40), INVALID, "random_seed"),
    ("NaN target in ingest", lambda c: c.ingest("nan_target", [([1.0], math.nan)]), INVALID, "non-finite target"),
    ("bad type in ListPredictionSets", lambda c: c.list_prediction_sets("a b"), INVALID, "not a valid name"),
]


@pytest.fixture(scope="module")
def bad_input_server(trained_server: ServerProcess) -> ServerProcess:
    with trained_server.client() as client:
        client.ingest("diabetes_like", [([float(i)] * 10, float(i)) for i in range(30)])
        client.train("diabetes_ridge", dataset="diabetes_like", algorithm="ridge")
        client.ingest("tiny", [([1.0, 2.0], 0), ([2.0, 1.0], 1)])
        client.ingest("one_class", [([float(i), 1.0], "same") for i in range(20)])
    # A Phase-4 style set: current, no artifact.
    import sqlite3

    with sqlite3.connect(trained_server.db) as conn:
        conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('legacy_type', 'x', 1)")
    trained_server.stop()
    return trained_server.start()


@pytest.mark.parametrize(("name", "call", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_precise_status(
    bad_input_server: ServerProcess, name: str, call: Call, code: grpc.StatusCode, message: str
) -> None:
    with bad_input_server.client() as client:
        with pytest.raises(PredserveClientError) as error:
            call(client)
        assert error.value.code is code, error.value.details
        assert message in error.value.details
        assert "Traceback" not in error.value.details
        # ...and the server keeps serving.
        assert client.predict("iris_classifier", IRIS_PROBES[:1]).predictions


def test_missing_target_in_ingest_stores_nothing(bad_input_server: ServerProcess) -> None:
    with grpc.insecure_channel(bad_input_server.target) as channel:
        from predserve.protos import predserve_pb2_grpc

        stub = predserve_pb2_grpc.PredserveStub(channel)
        good = pb.Row(features=[1.0], target=pb.Target(integer=1))
        bad = pb.Row(features=[2.0])
        with pytest.raises(grpc.RpcError) as error:
            stub.IngestHistory(iter([pb.IngestHistoryRequest(dataset="partial", rows=[good, bad])]), timeout=10)
    assert error.value.code() is INVALID
    assert "row 1 has no target" in error.value.details()
    with bad_input_server.client() as client, pytest.raises(PredserveClientError) as missing:
        client.train("m", "partial", "ridge")
    assert missing.value.code is NOT_FOUND
