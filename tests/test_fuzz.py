"""Property-based fuzzing of the request messages against a real in-process gRPC server.

Whatever the message, the answer is a well-formed status (never INTERNAL or UNKNOWN, never a
traceback), and the server keeps serving the model it had.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from predserve.server.app import build_server, build_services
from predserve.server.services.catalog import CATALOG
from predserve.server.settings import ServerConfig
from tests.support import IRIS_PROBES, iris_rows

ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

names = st.one_of(
    st.sampled_from(["iris_classifier", "iris", "", "../../etc/passwd", "a" * 65, "x/y", "ü", "a b", "-x", "ok_2"]),
    st.text(max_size=70),
)
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
feature_lists = st.lists(floats, max_size=8)
targets = st.one_of(
    st.builds(pb.Target),
    st.builds(pb.Target, label=st.text(max_size=10)),
    st.builds(pb.Target, integer=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.Target, number=floats),
)
rows = st.lists(st.builds(pb.Row, features=feature_lists, target=targets), max_size=6)
edge_values = st.sampled_from(
    ["-1", "0", "1", "2", "nan", "NaN", "Infinity", "1e308", "abc", "", "None", "true", "[1]"]
)
param_names = st.one_of(st.sampled_from(["C", "alpha", "n_estimators", "max_depth", "max_iter", "kernel"]), st.text())


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.PredserveStub]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    config = dataclasses.replace(ServerConfig(), port=0, db_path=workdir / "fuzz.db", models_dir=workdir / "models")
    services = build_services(config)
    server, port, _ = build_server(config, services)
    names_, iris = iris_rows()
    services.history.ingest("iris", names_, [_history_row(f, t) for f, t in iris])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.PredserveStub(channel)
        stub.Train(pb.TrainRequest(model_type="iris_classifier", algorithm="logistic_regression", dataset="iris"))
        yield stub
    server.stop(None)


def _history_row(features: list[float], target: int):  # noqa: ANN202
    from predserve.server.domain import HistoryRow

    return HistoryRow(tuple(features), target)


def call_status(method, request) -> grpc.StatusCode:  # noqa: ANN001
    try:
        method(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in ACCEPTABLE, f"{exc.code()}: {exc.details()}"
        assert exc.details() and "Traceback" not in exc.details()
        return exc.code()
    return grpc.StatusCode.OK


def still_serving(stub: pb_grpc.PredserveStub) -> None:
    answer = stub.Predict(pb.PredictRequest(model_type="iris_classifier", rows=[pb.Row(features=IRIS_PROBES[0])]))
    assert answer.prediction_set_id > 0 and len(answer.predictions) == 1


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(model_type=names, rows=rows, set_id=st.integers(-(2**63), 2**63 - 1), proba=st.booleans())
def test_predict_requests(stub: pb_grpc.PredserveStub, model_type: str, rows, set_id: int, proba: bool) -> None:
    request = pb.PredictRequest(model_type=model_type, rows=rows, prediction_set_id=set_id, include_probabilities=proba)
    call_status(stub.Predict, request)
    still_serving(stub)


@pytest.mark.slow  # 60 Trains, some of which fit
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model_type=names,
    algorithm=st.one_of(st.sampled_from(sorted(CATALOG)), st.text(max_size=20)),
    dataset=st.one_of(st.just("iris"), names),
    params=st.dictionaries(param_names, edge_values, max_size=3),
    rows=rows,
    test_fraction=st.one_of(st.just(0.0), floats),
    seed=st.integers(-(2**63), 2**63 - 1),
)
def test_train_requests(stub, model_type, algorithm, dataset, params, rows, test_fraction, seed) -> None:  # noqa: ANN001
    request = pb.TrainRequest(
        model_type=model_type,
        algorithm=algorithm,
        dataset=dataset,
        params=params,
        rows=rows,
        test_fraction=test_fraction,
        random_seed=seed,
    )
    call_status(stub.Train, request)
    still_serving(stub)


@FUZZ
@given(dataset=names, feature_names=st.lists(st.text(max_size=5), max_size=5), batches=st.lists(rows, max_size=3))
def test_ingest_streams(stub: pb_grpc.PredserveStub, dataset: str, feature_names, batches) -> None:  # noqa: ANN001
    messages = [pb.IngestHistoryRequest(dataset=dataset, feature_names=feature_names, rows=batch) for batch in batches]
    call_status(stub.IngestHistory, iter(messages))
    still_serving(stub)


@FUZZ
@given(model_type=names)
def test_list_prediction_sets_requests(stub: pb_grpc.PredserveStub, model_type: str) -> None:
    call_status(stub.ListPredictionSets, pb.ListPredictionSetsRequest(model_type=model_type))
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert [(m.model_type, m.loaded) for m in models if m.model_type == "iris_classifier"] == [
        ("iris_classifier", True)
    ]
