"""The Open Inference Protocol (KServe V2) on predserve's port: predserve's own V2 stubs, and the stock Triton client.

tritonclient registers the `inference` proto package too, so it never loads in this process: its checks run in
tests/triton_client_check.py, a process of their own, which this module starts and whose failures fail the test.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from predserve.client.library import target_value
from predserve.protos import grpc_predict_v2_pb2 as v2
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc
from predserve.server.model_store import ModelStore
from predserve.server.services.prediction import PredictionService
from tests.support import IRIS_PROBES, ServerProcess, diabetes_rows, iris_rows, run_triton_check

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
TRITON_CHECK = Path(__file__).with_name("triton_client_check.py")
SIZER_ROWS = [[2.0, 2.0], [35.0, 0.0], [1.0, 6.0]]
DIABETES_ROWS = [row for row, _ in diabetes_rows()[:3]]
NUMPY_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
CONTENTS_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents"}


@dataclass
class V2Server:
    process: ServerProcess
    first_set: int  # an older iris_classifier set, pinned by version
    current_set: int

    def stub(self, channel: grpc.Channel) -> v2_grpc.GRPCInferenceServiceStub:
        return v2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def v2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    """Classifiers with integer and string labels, a regressor, two iris sets and a Phase-4 type; restarted."""
    process = ServerProcess(tmp_path_factory.mktemp("v2")).start()
    with process.client() as client:
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        first = client.train(
            "iris_classifier", dataset="iris", algorithm="random_forest", params={"n_estimators": 5, "max_depth": 1}
        )
        current = client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
        client.ingest("diabetes", diabetes_rows())
        client.train("diabetes_ridge", dataset="diabetes", algorithm="ridge")
        labelled = [([float(i), float(i % 7)], "big" if i >= 20 else "small") for i in range(40)]
        client.ingest("sizes", labelled, ["size", "noise"])
        client.train("sizer", dataset="sizes", algorithm="logistic_regression")
    import sqlite3

    with sqlite3.connect(process.db) as conn:
        conn.execute("INSERT INTO prediction_sets (model_type, dataset, is_current) VALUES ('legacy_type', 'x', 1)")
    process.stop()
    process.start()
    yield V2Server(process, first.prediction_set_id, current.prediction_set_id)
    process.kill()


@pytest.fixture
def stub(v2_server: V2Server) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(v2_server.process.target) as channel:
        yield v2_server.stub(channel)


def infer_request(
    model: str,
    rows: Sequence[Sequence[float]],
    datatype: str = "FP64",
    raw: bool = True,
    outputs: Sequence[str] = (),
    version: str = "",
    request_id: str = "",
) -> v2.ModelInferRequest:
    matrix = np.asarray(rows, dtype=NUMPY_TYPES[datatype])
    tensor = v2.ModelInferRequest.InferInputTensor(name="features", datatype=datatype, shape=list(matrix.shape))
    if not raw:
        getattr(tensor.contents, CONTENTS_FIELDS[datatype]).extend(matrix.ravel().tolist())
    return v2.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=[tensor],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
        raw_input_contents=[matrix.astype(matrix.dtype.newbyteorder("<")).tobytes()] if raw else [],
    )


def output_array(response: v2.ModelInferResponse, name: str) -> np.ndarray | list[str]:
    """An output as numpy (or a list of str for BYTES), read from raw or typed contents."""
    index = [output.name for output in response.outputs].index(name)
    output = response.outputs[index]
    if response.raw_output_contents:
        data = response.raw_output_contents[index]
        if output.datatype == "BYTES":
            labels, offset = [], 0
            while offset < len(data):
                (length,) = struct.unpack_from("<I", data, offset)
                labels.append(data[offset + 4 : offset + 4 + length].decode())
                offset += 4 + length
            return labels
        dtype = {"INT64": "<i8", "FP64": "<f8"}[output.datatype]
        return np.frombuffer(data, dtype=dtype).reshape(list(output.shape))
    if output.datatype == "BYTES":
        return [item.decode() for item in output.contents.bytes_contents]
    values = output.contents.int64_contents if output.datatype == "INT64" else output.contents.fp64_contents
    return np.asarray(values).reshape(list(output.shape))


def predserve_answer(
    process: ServerProcess, model: str, rows: Sequence[Sequence[float]], set_id: int = 0, proba: bool = False
) -> tuple[list, np.ndarray | None]:
    """The same rows through predserve's own API: labels, and probabilities when asked."""
    with process.client() as client:
        response = client.predict(model, [list(map(float, row)) for row in rows], set_id, proba)
    labels = [target_value(p.value) for p in response.predictions]
    return labels, np.asarray([list(p.probabilities) for p in response.predictions]) if proba else None


def rpc_error(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=10)  # type: ignore[operator]
    return error.value


# --- readiness and metadata -------------------------------------------------------------------------------------


def test_server_ready_waits_for_start_up_loading() -> None:
    store = ModelStore()
    service = PredictionService(store, sets=None, loader=None)  # type: ignore[arg-type]
    assert not service.server_ready()
    store.mark_startup_loaded()
    assert service.server_ready()


def test_server_live_ready_and_metadata(stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(v2.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(v2.ServerReadyRequest(), timeout=10).ready
    metadata = stub.ServerMetadata(v2.ServerMetadataRequest(), timeout=10)
    assert metadata.name == "predserve" and metadata.version == "0.5.0"


def test_model_ready_follows_the_model_store(v2_server: V2Server, stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    def ready(name: str, version: str = "") -> bool:
        return stub.ModelReady(v2.ModelReadyRequest(name=name, version=version), timeout=10).ready

    assert ready("iris_classifier")
    assert ready("iris_classifier", str(v2_server.first_set))
    assert not ready("no_such_model")
    assert not ready("legacy_type")  # known, but needs training
    assert not ready("iris_classifier", "999999")
    assert not ready("sizer", str(v2_server.first_set))  # a set of another type
    error = rpc_error(stub.ModelReady, v2.ModelReadyRequest(name="iris_classifier", version="latest"))
    assert error.code() is INVALID
    assert error.details() == (
        "model version 'latest' is not a prediction set id: give a positive integer, or no version for the current set"
    )


def test_model_metadata_of_a_classifier(v2_server: V2Server, stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name="iris_classifier"), timeout=10)
    assert metadata.name == "iris_classifier" and metadata.platform == "sklearn"
    assert list(metadata.versions) == [str(v2_server.current_set), str(v2_server.first_set)]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("features", "FP64", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("predict", "INT64", [-1]),
        ("predict_proba", "FP64", [-1, 3]),
    ]


@pytest.mark.parametrize(
    ("model", "n_features", "outputs"),
    [
        ("diabetes_ridge", 10, [("predict", "FP64", [-1])]),
        ("sizer", 2, [("predict", "BYTES", [-1]), ("predict_proba", "FP64", [-1, 2])]),
    ],
)
def test_model_metadata_of_a_regressor_and_of_string_labels(
    stub: v2_grpc.GRPCInferenceServiceStub, model: str, n_features: int, outputs: list
) -> None:
    metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name=model), timeout=10)
    assert [list(t.shape) for t in metadata.inputs] == [[-1, n_features]]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == outputs


# --- inference ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "INT64"])
def test_infer_gives_the_predictions_of_predserve_api(
    v2_server: V2Server, stub: v2_grpc.GRPCInferenceServiceStub, datatype: str, raw: bool
) -> None:
    rows = np.asarray(IRIS_PROBES, dtype=NUMPY_TYPES[datatype]).tolist()  # the values this datatype can carry
    request = infer_request("iris_classifier", rows, datatype, raw, request_id="r-1")
    response = stub.ModelInfer(request, timeout=10)
    labels, probabilities = predserve_answer(v2_server.process, "iris_classifier", rows, proba=True)

    assert (response.model_name, response.model_version, response.id) == (
        "iris_classifier",
        str(v2_server.current_set),
        "r-1",
    )
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("predict", "INT64", [4]),
        ("predict_proba", "FP64", [4, 3]),
    ]
    # The answer comes in the form the request used.
    assert len(response.raw_output_contents) == (2 if raw else 0)
    assert all(o.HasField("contents") is not raw for o in response.outputs)
    assert output_array(response, "predict").tolist() == labels  # type: ignore[union-attr]
    np.testing.assert_array_equal(output_array(response, "predict_proba"), probabilities)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_string_labels_come_back_as_bytes(
    v2_server: V2Server, stub: v2_grpc.GRPCInferenceServiceStub, raw: bool
) -> None:
    response = stub.ModelInfer(infer_request("sizer", SIZER_ROWS, raw=raw, outputs=["predict"]), timeout=10)
    labels, _ = predserve_answer(v2_server.process, "sizer", SIZER_ROWS)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("predict", "BYTES", [3])]
    assert output_array(response, "predict") == labels == ["small", "big", "small"]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_regressor_predicts_fp64_and_has_no_probabilities(
    v2_server: V2Server, stub: v2_grpc.GRPCInferenceServiceStub, raw: bool
) -> None:
    response = stub.ModelInfer(infer_request("diabetes_ridge", DIABETES_ROWS, raw=raw), timeout=10)
    labels, _ = predserve_answer(v2_server.process, "diabetes_ridge", DIABETES_ROWS)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("predict", "FP64", [3])]
    assert output_array(response, "predict").tolist() == labels  # type: ignore[union-attr]


def test_only_the_requested_outputs_in_the_requested_order(stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    request = infer_request("iris_classifier", IRIS_PROBES, outputs=["predict_proba", "predict"])
    assert [o.name for o in stub.ModelInfer(request, timeout=10).outputs] == ["predict_proba", "predict"]
    request = infer_request("iris_classifier", IRIS_PROBES, outputs=["predict_proba"])
    response = stub.ModelInfer(request, timeout=10)
    assert [o.name for o in response.outputs] == ["predict_proba"]
    assert output_array(response, "predict_proba").sum(axis=1) == pytest.approx([1.0] * 4)  # type: ignore[union-attr]


def test_a_pinned_version_answers_with_that_prediction_set(
    v2_server: V2Server, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    version = str(v2_server.first_set)
    response = stub.ModelInfer(infer_request("iris_classifier", IRIS_PROBES, version=version), timeout=10)
    labels, probabilities = predserve_answer(
        v2_server.process, "iris_classifier", IRIS_PROBES, v2_server.first_set, proba=True
    )
    current_labels, current_probabilities = predserve_answer(
        v2_server.process, "iris_classifier", IRIS_PROBES, proba=True
    )
    assert response.model_version == version
    assert output_array(response, "predict").tolist() == labels  # type: ignore[union-attr]
    np.testing.assert_array_equal(output_array(response, "predict_proba"), probabilities)
    # The two sets are different pipelines, so this tells them apart.
    assert not np.array_equal(probabilities, current_probabilities)
    metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name="iris_classifier", version=version), timeout=10)
    assert [list(t.shape) for t in metadata.outputs] == [[-1], [-1, 3]]


# --- errors ------------------------------------------------------------------------------------------------------


def _with(request: v2.ModelInferRequest, **changes: object) -> v2.ModelInferRequest:
    for name, value in changes.items():
        target = request.inputs[0] if name in ("datatype", "shape", "name") else request
        if isinstance(value, list):
            target.ClearField(name)
            getattr(target, name).extend(value)
        else:
            setattr(target, name, value)
    return request


def _two_inputs() -> v2.ModelInferRequest:
    request = infer_request("iris_classifier", IRIS_PROBES)
    request.inputs.add().CopyFrom(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    return request


def _raw_and_typed() -> v2.ModelInferRequest:
    request = infer_request("iris_classifier", IRIS_PROBES[:1])
    request.inputs[0].contents.fp64_contents.extend(IRIS_PROBES[0])
    return request


def _wrong_typed_field() -> v2.ModelInferRequest:
    request = infer_request("iris_classifier", IRIS_PROBES[:1], raw=False)
    request.inputs[0].datatype = "FP32"
    return request


def _classification_extension() -> v2.ModelInferRequest:
    request = infer_request("iris_classifier", IRIS_PROBES[:1], outputs=["predict"])
    request.outputs[0].parameters["classification"].int64_param = 2
    return request


ERROR_CASES: list[tuple[str, v2.ModelInferRequest, grpc.StatusCode, str]] = [
    ("unknown model", infer_request("no_such_model", IRIS_PROBES), NOT_FOUND, "unknown model type 'no_such_model'"),
    (
        "needs training",
        infer_request("legacy_type", [[1.0]]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "model type 'legacy_type' has no usable model: current prediction set",
    ),
    (
        "too few features",
        infer_request("iris_classifier", [[1.0, 2.0, 3.0]]),
        INVALID,
        "rows have 3 features, model type expects 4",
    ),
    (
        "three dimensions",
        _with(infer_request("iris_classifier", IRIS_PROBES), shape=[2, 2, 4]),
        INVALID,
        "input 'features' has shape [2, 2, 4]; expected [rows, n_features]",
    ),
    (
        "negative dimension",
        _with(infer_request("iris_classifier", IRIS_PROBES), shape=[-1, 4]),
        INVALID,
        "input 'features' has shape [-1, 4]; expected [rows, n_features]",
    ),
    (
        "no rows",
        infer_request("iris_classifier", np.zeros((0, 4))),
        INVALID,
        "expected a non-empty [rows, 4] matrix, got shape [0, 4]",
    ),
    (
        "half-precision datatype",
        _with(infer_request("iris_classifier", IRIS_PROBES), datatype="FP16"),
        INVALID,
        "input 'features' has datatype 'FP16'; use one of FP32, FP64, INT32, INT64",
    ),
    (
        "string datatype",
        _with(infer_request("iris_classifier", IRIS_PROBES), datatype="BYTES"),
        INVALID,
        "input 'features' has datatype 'BYTES'; use one of FP32, FP64, INT32, INT64",
    ),
    (
        "raw bytes too short",
        _with(infer_request("iris_classifier", IRIS_PROBES, "FP32"), datatype="FP64"),
        INVALID,
        "input 'features': raw contents hold 64 bytes; shape [4, 4] in FP64 needs 128",
    ),
    (
        "raw bytes for more rows than the shape",
        _with(infer_request("iris_classifier", IRIS_PROBES), shape=[3, 4]),
        INVALID,
        "input 'features': raw contents hold 128 bytes; shape [3, 4] in FP64 needs 96",
    ),
    (
        "typed values missing",
        _with(infer_request("iris_classifier", IRIS_PROBES, raw=False), shape=[5, 4]),
        INVALID,
        "input 'features': contents.fp64_contents holds 16 values; shape [5, 4] needs 20",
    ),
    (
        "typed values in the wrong field",
        _wrong_typed_field(),
        INVALID,
        "input 'features' is FP32, whose values go in contents.fp32_contents; got fp64_contents",
    ),
    (
        "raw and typed at once",
        _raw_and_typed(),
        INVALID,
        "input 'features' has typed contents as well as raw_input_contents; send one",
    ),
    ("two inputs", _two_inputs(), INVALID, "expected exactly one input tensor [rows, n_features], got 2"),
    (
        "no input",
        v2.ModelInferRequest(model_name="iris_classifier"),
        INVALID,
        "expected exactly one input tensor [rows, n_features], got 0",
    ),
    ("NaN feature", infer_request("iris_classifier", [[math.nan, 1, 1, 1]]), INVALID, "row 0 holds a non-finite value"),
    (
        "unknown output",
        infer_request("iris_classifier", IRIS_PROBES, outputs=["scores"]),
        INVALID,
        "model 'iris_classifier' has no output 'scores'; it gives predict, predict_proba",
    ),
    (
        "probabilities of a regressor",
        infer_request("diabetes_ridge", DIABETES_ROWS, outputs=["predict_proba"]),
        INVALID,
        "model 'diabetes_ridge' has no output 'predict_proba'; it gives predict",
    ),
    (
        "output twice",
        infer_request("iris_classifier", IRIS_PROBES, outputs=["predict", "predict"]),
        INVALID,
        "output 'predict' is requested twice",
    ),
    (
        "classification extension",
        _classification_extension(),
        INVALID,
        "output 'predict': the classification extension is not supported; ask for 'predict' and 'predict_proba'",
    ),
    (
        "version not a number",
        infer_request("iris_classifier", IRIS_PROBES, version="v1"),
        INVALID,
        "model version 'v1' is not a prediction set id: give a positive integer, or no version for the current set",
    ),
    ("version zero", infer_request("iris_classifier", IRIS_PROBES, version="0"), INVALID, "model version '0'"),
    (
        "missing version",
        infer_request("iris_classifier", IRIS_PROBES, version="999999"),
        NOT_FOUND,
        "prediction set 999999 does not exist",
    ),
    ("bad model name", infer_request("../etc", IRIS_PROBES), INVALID, "model_type '../etc' is not a valid name"),
]


@pytest.mark.parametrize(("name", "request_", "code", "message"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_requests_get_a_precise_status_and_message(
    stub: v2_grpc.GRPCInferenceServiceStub,
    name: str,
    request_: v2.ModelInferRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    error = rpc_error(stub.ModelInfer, request_)
    assert error.code() is code, error.details()
    assert error.details().startswith(message), error.details()
    # ...and the server keeps serving.
    assert stub.ModelInfer(infer_request("iris_classifier", IRIS_PROBES[:1]), timeout=10).outputs


def test_pinned_version_of_another_model_type_is_not_found(
    v2_server: V2Server, stub: v2_grpc.GRPCInferenceServiceStub
) -> None:
    error = rpc_error(stub.ModelInfer, infer_request("sizer", SIZER_ROWS, version=str(v2_server.first_set)))
    assert error.code() is NOT_FOUND
    assert error.details() == (
        f"prediction set {v2_server.first_set} belongs to model type 'iris_classifier', not 'sizer'"
    )


def test_metadata_of_an_unknown_model_is_not_found(stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    error = rpc_error(stub.ModelMetadata, v2.ModelMetadataRequest(name="no_such_model"))
    assert (error.code(), error.details()) == (NOT_FOUND, "unknown model type 'no_such_model'")


def test_v2_service_is_in_health_and_reflection(v2_server: V2Server) -> None:
    with grpc.insecure_channel(v2_server.process.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = {s.name for answer in answers for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "predserve.v1.Predserve"} <= services


# --- the stock Triton client -------------------------------------------------------------------------------------


def test_stock_triton_client(v2_server: V2Server, tmp_path: Path) -> None:
    """tritonclient[grpc], unchanged, in a process of its own; the answers it must see come from predserve's API."""
    process = v2_server.process
    fp32_probes = np.asarray(IRIS_PROBES, dtype=np.float32).astype(np.float64).tolist()
    expected = {
        "first_set": v2_server.first_set,
        "current_set": v2_server.current_set,
        "probes": IRIS_PROBES,
        "iris_fp64": _answers(process, "iris_classifier", IRIS_PROBES),
        "iris_fp32": _answers(process, "iris_classifier", fp32_probes),
        "iris_pinned": _answers(process, "iris_classifier", IRIS_PROBES, v2_server.first_set),
        "sizer_rows": SIZER_ROWS,
        "sizer": _answers(process, "sizer", SIZER_ROWS),
        "diabetes_rows": DIABETES_ROWS,
        "diabetes": _answers(process, "diabetes_ridge", DIABETES_ROWS, proba=False),
    }
    run_triton_check(TRITON_CHECK, process.target, expected, tmp_path)


def _answers(
    process: ServerProcess, model: str, rows: Sequence[Sequence[float]], set_id: int = 0, proba: bool = True
) -> dict:
    labels, probabilities = predserve_answer(process, model, rows, set_id, proba)
    return {"predict": labels, "predict_proba": None if probabilities is None else probabilities.tolist()}
