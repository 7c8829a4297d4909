"""The gRPC API end to end, against a real server process on a loopback port."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from predserve.client.library import PredserveClientError, target_value
from tests.support import IRIS_PROBES, ServerProcess, diabetes_rows, iris_rows


def test_train_records_the_artifact_and_predict_uses_it(trained_server: ServerProcess) -> None:
    with trained_server.client() as client:
        sets = client.list_prediction_sets("iris_classifier").prediction_sets
        current = [s for s in sets if s.is_current]
        assert len(current) == 1
        artifact = trained_server.models_dir / current[0].model_artifact_path
        assert artifact.is_file() and artifact.stat().st_size == current[0].artifact_size_bytes
        assert current[0].metrics["accuracy"] > 0.8
        assert current[0].sklearn_version and current[0].joblib_version

        response = client.predict("iris_classifier", IRIS_PROBES)
    assert response.prediction_set_id == current[0].id
    assert [target_value(p.value) for p in response.predictions][:2] == [0, 2]
    assert current[0].artifact_sha256.startswith(response.artifact_sha256_prefix)


def test_probabilities_follow_the_class_order(trained_server: ServerProcess) -> None:
    with trained_server.client() as client:
        response = client.predict("iris_forest", IRIS_PROBES[:2], include_probabilities=True)
    assert [target_value(c) for c in response.classes] == [0, 1, 2]
    for prediction in response.predictions:
        probabilities = list(prediction.probabilities)
        assert sum(probabilities) == pytest.approx(1.0)
        assert probabilities.index(max(probabilities)) == target_value(prediction.value)


def test_list_models_reports_each_loaded_type(trained_server: ServerProcess) -> None:
    with trained_server.client() as client:
        models = {m.model_type: m for m in client.list_models().models}
    assert set(models) == {"iris_classifier", "iris_forest"}
    for model in models.values():
        assert model.loaded and model.prediction_set_id > 0
        assert model.model_artifact_path.endswith(".joblib")
        assert model.feature_names[0] == "sepal length (cm)"
        assert model.trained_at


def test_pinned_prediction_set_answers_after_a_newer_one_is_current(server: ServerProcess) -> None:
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        first = client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
        second = client.train(
            "iris_classifier", dataset="iris", algorithm="random_forest", params={"n_estimators": 5, "max_depth": 1}
        )
        assert client.predict("iris_classifier", IRIS_PROBES).prediction_set_id == second.prediction_set_id
        pinned = client.predict("iris_classifier", IRIS_PROBES, prediction_set_id=first.prediction_set_id)
        assert pinned.prediction_set_id == first.prediction_set_id
        sets = client.list_prediction_sets("iris_classifier").prediction_sets
    assert [(s.id, s.is_current) for s in sets] == [(second.prediction_set_id, True), (first.prediction_set_id, False)]


def test_regression_with_string_and_inline_data(server: ServerProcess) -> None:
    with server.client() as client:
        client.ingest("diabetes", diabetes_rows())
        trained = client.train("diabetes_ridge", dataset="diabetes", algorithm="ridge", params={"alpha": 0.5})
        assert set(trained.metrics) == {"r2", "mae", "rmse", "holdout_rows"}
        answer = client.predict("diabetes_ridge", [diabetes_rows()[0][0]])
        assert isinstance(target_value(answer.predictions[0].value), float)

        labelled = [([float(i), float(i % 7)], "big" if i >= 20 else "small") for i in range(40)]
        client.ingest("sizes", labelled, ["size", "noise"])
        client.train(
            "sizer", dataset="sizes", algorithm="hist_gradient_boosting", params={"max_iter": 20, "min_samples_leaf": 2}
        )
        labels = [target_value(p.value) for p in client.predict("sizer", [[2.0, 2.0], [35.0, 0.0]]).predictions]
    assert labels == ["small", "big"]


def test_ingest_appends_and_reports_totals(server: ServerProcess) -> None:
    with server.client() as client:
        first = client.ingest("grow", [([1.0, 2.0], 0)] * 3, ["a", "b"], batch_size=2)
        second = client.ingest("grow", [([3.0, 4.0], 1)] * 2)
        with pytest.raises(PredserveClientError) as error:
            client.ingest("grow", [([1.0, 2.0, 3.0], 1)])
    assert (first.rows_added, first.total_rows) == (3, 3)
    assert (second.rows_added, second.total_rows) == (2, 5)
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "3 features, expected 2" in error.value.details


def test_health_and_reflection_are_registered(trained_server: ServerProcess) -> None:
    with grpc.insecure_channel(trained_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "predserve.v1.Predserve", "predserve.model.iris_classifier"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = {s.name for answer in answers for s in answer.list_services_response.service}
    assert {"predserve.v1.Predserve", "grpc.health.v1.Health"} <= services


def test_server_refuses_to_start_on_a_taken_port(trained_server: ServerProcess, tmp_path) -> None:
    second = ServerProcess(tmp_path, port=trained_server.port).start(wait=False)
    assert second.wait_exit(timeout=60) != 0
    assert "Failed to bind" in second.log() or "cannot start" in second.log()
    with trained_server.client() as client:
        assert client.predict("iris_classifier", IRIS_PROBES[:1]).prediction_set_id > 0


def test_sigterm_stops_gracefully(tmp_path) -> None:
    process = ServerProcess(tmp_path).start()
    with process.client() as client:
        assert client.health() == "SERVING"
    assert process.stop() == 0
    assert "stopped" in process.log()
