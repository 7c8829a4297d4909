"""Typed errors from real servers, the same in both clients: each refusal the server can be brought to gives its
class, with the status code and the server's message kept."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from predserve.client import (
    AsyncPredserveClient,
    DatasetNotFound,
    DeadlineExceeded,
    FailedPreconditionError,
    InvalidArgumentError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    NotFoundError,
    Overloaded,
    PermissionDenied,
    PermissionDeniedError,
    PredictionSetNotFound,
    PredserveClient,
    PredserveClientError,
    ResourceExhaustedError,
    Unauthenticated,
    UnauthenticatedError,
)
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

ADMIN = "admin-" + secrets.token_urlsafe(24)
PREDICT = "predict-" + secrets.token_urlsafe(24)
MAX_ROWS = 200  # above iris's 150, so iris can be ingested in one stream


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"PREDSERVE_ADMIN_TOKEN": ADMIN, "PREDSERVE_PREDICT_TOKEN": PREDICT}
    args = ["--max-rows-per-request", str(MAX_ROWS)]
    process = ServerProcess(tmp_path_factory.mktemp("errors"), env=env, extra_args=args).start()
    with process.client(token=ADMIN) as client:
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    yield process
    process.kill()


def failure(kind: str, target: str, method: str, *args: Any, client: dict[str, Any], **kwargs: Any) -> Exception:
    """What calling `method` raises, from the sync or the async client."""
    if kind == "sync":
        with PredserveClient(target, **client) as sync, pytest.raises(PredserveClientError) as raised:
            getattr(sync, method)(*args, **kwargs)
        return raised.value

    async def call() -> None:
        async with AsyncPredserveClient(target, **client) as aio:
            await getattr(aio, method)(*args, **kwargs)

    with pytest.raises(PredserveClientError) as raised:
        asyncio.run(call())
    return raised.value


@dataclass(frozen=True)
class Case:
    error: type[PredserveClientError]
    code: grpc.StatusCode
    call: tuple[Any, ...]  # method name, then its positional arguments
    keywords: dict[str, Any]
    token: str  # "" for none
    details: str | None  # None: not predserve's own text (gRPC's, or asserted elsewhere)


CASES: dict[str, Case] = {
    "unknown model type": Case(
        ModelNotFound,
        grpc.StatusCode.NOT_FOUND,
        ("predict", "no_such_model", IRIS_PROBES),
        {},
        ADMIN,
        "unknown model type 'no_such_model'",
    ),
    "unknown prediction set": Case(
        PredictionSetNotFound,
        grpc.StatusCode.NOT_FOUND,
        ("predict", "iris_classifier", IRIS_PROBES),
        {"prediction_set_id": 9999},
        PREDICT,
        "prediction set 9999 does not exist",
    ),
    "promote an unknown set": Case(
        PredictionSetNotFound,
        grpc.StatusCode.NOT_FOUND,
        ("promote", 9999),
        {},
        ADMIN,
        "prediction set 9999 does not exist",
    ),
    "roll back an unknown model type": Case(
        ModelNotFound,
        grpc.StatusCode.NOT_FOUND,
        ("rollback", "no_such_model"),
        {},
        ADMIN,
        "unknown model type 'no_such_model'",
    ),
    "train on an unknown dataset": Case(
        DatasetNotFound,
        grpc.StatusCode.NOT_FOUND,
        ("train", "other"),
        {"dataset": "no_such_data", "algorithm": "logistic_regression"},
        ADMIN,
        "dataset 'no_such_data' has no rows in data_history; ingest it first",
    ),
    "wrong feature count": Case(
        InvalidInput,
        grpc.StatusCode.INVALID_ARGUMENT,
        ("predict", "iris_classifier", [[1.0, 2.0]]),
        {},
        PREDICT,
        "row 0 has 2 features, expected 4",
    ),
    "too many rows": Case(
        Overloaded,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        ("predict", "iris_classifier", IRIS_PROBES[:1] * (MAX_ROWS + 1)),
        {},
        PREDICT,
        f"the request has {MAX_ROWS + 1} rows, more than the limit of {MAX_ROWS} rows per request "
        "(--max-rows-per-request)",
    ),
    "no token": Case(
        Unauthenticated,
        grpc.StatusCode.UNAUTHENTICATED,
        ("predict", "iris_classifier", IRIS_PROBES),
        {},
        "",
        "missing bearer token: /predserve.v1.Predserve/Predict needs the predict or the admin token "
        "in metadata 'authorization: Bearer <token>'",
    ),
    "wrong token": Case(
        Unauthenticated,
        grpc.StatusCode.UNAUTHENTICATED,
        ("list_models",),
        {},
        "not-a-token",
        None,
    ),
    "predict token on train": Case(
        PermissionDenied,
        grpc.StatusCode.PERMISSION_DENIED,
        ("train", "iris_classifier"),
        {"dataset": "iris", "algorithm": "logistic_regression"},
        PREDICT,
        None,
    ),
    "deadline": Case(
        DeadlineExceeded,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        ("train", "slow_forest"),
        # 0.3 s: well past what admission and the data load take on a loaded machine (a 50 ms deadline once ran out
        # before the fit, answered RESOURCE_EXHAUSTED), well short of fitting 1,000 trees (about a second).
        {"dataset": "iris", "algorithm": "random_forest", "params": {"n_estimators": 1000}, "timeout": 0.3},
        ADMIN,
        None,
    ),
}


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_refusal_has_its_type(guarded: ServerProcess, case: str, kind: str) -> None:
    expected = CASES[case]
    method, *args = expected.call
    error = failure(kind, guarded.target, method, *args, client={"token": expected.token or None}, **expected.keywords)
    assert type(error) is expected.error
    assert isinstance(error, PredserveClientError) and error.code is expected.code
    if expected.details is not None:
        assert error.details == expected.details
    assert str(error) == f"{expected.code.name}: {error.details}"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_model_type_that_cannot_answer_is_not_ready(tmp_path: Path, kind: str) -> None:
    """A trained type whose only artifact is gone at start-up is listed but not loaded: Predict says so."""
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as client:
            names, rows = iris_rows()
            client.ingest("iris", rows, names)
            trained = client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
        server.stop()
        (server.models_dir / trained.model_artifact_path).unlink()
        server.start()
        error = failure(kind, server.target, "predict", "iris_classifier", IRIS_PROBES, client={})
    finally:
        server.kill()
    assert type(error) is ModelNotReady and isinstance(error, FailedPreconditionError)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details.startswith("model type 'iris_classifier' has no usable model: ")


def test_the_first_release_names_still_catch_them() -> None:
    assert InvalidArgumentError is InvalidInput and UnauthenticatedError is Unauthenticated
    assert PermissionDeniedError is PermissionDenied and ResourceExhaustedError is Overloaded
    for specific in (ModelNotFound, PredictionSetNotFound, DatasetNotFound):
        assert issubclass(specific, NotFoundError)
    assert issubclass(ModelNotReady, FailedPreconditionError)
