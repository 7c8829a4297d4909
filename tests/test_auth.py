"""Bearer tokens against a real server: which token may call what, and what a refusal says."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from predserve.client.library import NotFoundError, PermissionDeniedError, PredserveClientError, UnauthenticatedError
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.support import IRIS_PROBES, PROJECT_ROOT, ServerProcess, iris_rows

ADMIN = "admin-" + secrets.token_urlsafe(24)
PREDICT = "predict-" + secrets.token_urlsafe(24)
PREDICT_METHOD = "/predserve.v1.Predserve/Predict"
TRAIN_METHOD = "/predserve.v1.Predserve/Train"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Admin token from a file, predict token from the environment; iris trained with the admin token."""
    workdir = tmp_path_factory.mktemp("auth")
    admin_file = workdir / "admin.token"
    admin_file.write_text(ADMIN + "\n")
    env = {"PREDSERVE_ADMIN_TOKEN_FILE": str(admin_file), "PREDSERVE_PREDICT_TOKEN": PREDICT}
    process = ServerProcess(workdir, env=env).start()
    with process.client(token=ADMIN) as client:
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    yield process
    process.kill()


def test_predict_answers_the_predict_token_and_the_admin_token(guarded: ServerProcess) -> None:
    for token in (PREDICT, ADMIN):
        with guarded.client(token=token) as client:
            assert client.predict("iris_classifier", IRIS_PROBES[:1]).prediction_set_id > 0
            assert [m.model_type for m in client.list_models().models] == ["iris_classifier"]


def test_a_call_without_a_token_is_unauthenticated(guarded: ServerProcess) -> None:
    with guarded.client() as client:
        with pytest.raises(UnauthenticatedError) as predict:
            client.predict("iris_classifier", IRIS_PROBES[:1])
        with pytest.raises(UnauthenticatedError) as train:
            client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    assert predict.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert predict.value.details == (
        f"missing bearer token: {PREDICT_METHOD} needs the predict or the admin token "
        "in metadata 'authorization: Bearer <token>'"
    )
    assert train.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert train.value.details.startswith(f"missing bearer token: {TRAIN_METHOD} needs the admin token")


def test_a_wrong_or_malformed_token_is_unauthenticated(guarded: ServerProcess) -> None:
    with guarded.client(token=PREDICT + "x") as client:
        with pytest.raises(UnauthenticatedError) as wrong:
            client.predict("iris_classifier", IRIS_PROBES[:1])
    assert wrong.value.details == f"invalid bearer token for {PREDICT_METHOD}"

    with grpc.insecure_channel(guarded.target) as channel:
        stub = pb_grpc.PredserveStub(channel)
        with pytest.raises(grpc.RpcError) as malformed:
            stub.Predict(
                pb.PredictRequest(model_type="iris_classifier"), metadata=[("authorization", ADMIN)], timeout=5
            )
    assert malformed.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert malformed.value.details().startswith("authorization metadata is not 'Bearer <token>'")


def test_the_predict_token_may_not_train_or_ingest(guarded: ServerProcess) -> None:
    with guarded.client(token=PREDICT) as client:
        with pytest.raises(PermissionDeniedError) as train:
            client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
        with pytest.raises(PermissionDeniedError) as ingest:
            client.ingest("sneaked", [([1.0, 2.0], 0)] * 3)
    assert train.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert train.value.details == f"the predict token may not call {TRAIN_METHOD}: it needs the admin token"
    assert ingest.value.details == (
        "the predict token may not call /predserve.v1.Predserve/IngestHistory: it needs the admin token"
    )
    with guarded.client(token=ADMIN) as client:
        with pytest.raises(NotFoundError, match="'sneaked' has no rows"):
            client.train("sneaked", dataset="sneaked", algorithm="logistic_regression")
        assert len(client.list_prediction_sets("iris_classifier").prediction_sets) == 1


def test_health_and_reflection_stay_open(guarded: ServerProcess) -> None:
    with grpc.insecure_channel(guarded.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="predserve.model.iris_classifier"), timeout=5)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = {s.name for answer in answers for s in answer.list_services_response.service}
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert "predserve.v1.Predserve" in services


def test_cli_sends_the_token_from_a_file_or_the_environment(guarded: ServerProcess, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN + "\n")
    command = [sys.executable, "-m", "predserve.client", "--target", guarded.target]
    train = ["train", "--model-type", "iris_classifier", "--dataset", "iris", "--algorithm", "logistic_regression"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREDSERVE_")}

    by_file = subprocess.run(
        [*command, "--token-file", str(token_file), *train],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert by_file.returncode == 0, by_file.stderr

    by_env = subprocess.run(
        [*command, *train],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env | {"PREDSERVE_TOKEN": PREDICT},
    )
    assert by_env.returncode == 1
    assert (
        by_env.stderr.strip()
        == f"predserve: PERMISSION_DENIED: the predict token may not call {TRAIN_METHOD}: it needs the admin token"
    )


def test_tokens_never_reach_the_log(guarded: ServerProcess) -> None:
    with guarded.client(token="not-" + ADMIN) as client:
        with pytest.raises(PredserveClientError):
            client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    log = guarded.log()
    assert f"denied {TRAIN_METHOD} from ipv4:127.0.0.1:" in log
    assert "admin token set, predict token set" in log
    assert ADMIN not in log and PREDICT not in log
