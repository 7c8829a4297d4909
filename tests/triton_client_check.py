"""The stock Triton client (tritonclient[grpc]) against a running predserve: run by tests/test_v2_grpc.py.

It runs in a process of its own because tritonclient registers the `inference` proto package, as predserve's
own V2 bindings do, and one process cannot hold both. It imports nothing from predserve. The answers it must
see were fetched through predserve's own API and are passed in as JSON (--expected). Every check runs; each
failure is printed, and the exit status is 1 if any failed.

Typed (non-raw) inputs go through tritonclient's own generated stubs (tritonclient.grpc.service_pb2), because
InferenceServerClient.infer always sends raw bytes.
"""

from __future__ import annotations

import argparse
import functools
import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


@dataclass
class Context:
    client: triton.InferenceServerClient
    # tritonclient's own generated stub, for the requests InferenceServerClient cannot make.
    stub: service_pb2_grpc.GRPCInferenceServiceStub
    expected: dict[str, Any]


Check = Callable[[Context], None]
CHECKS: list[Check] = []


def check(function: Check) -> Check:
    CHECKS.append(function)
    return function


def infer(
    client: triton.InferenceServerClient,
    model: str,
    rows: Sequence[Sequence[float]],
    dtype: type = np.float64,
    datatype: str = "FP64",
    outputs: Sequence[str] | None = None,
    version: str = "",
) -> triton.InferResult:
    matrix = np.asarray(rows, dtype=dtype)
    tensor = triton.InferInput("features", list(matrix.shape), datatype)
    tensor.set_data_from_numpy(matrix)
    requested = None if outputs is None else [triton.InferRequestedOutput(name) for name in outputs]
    return client.infer(model, [tensor], model_version=version, outputs=requested)


def expect_error(call: Callable[[], object], status: str, message: str) -> None:
    try:
        call()
    except InferenceServerException as exc:
        assert exc.status() == f"StatusCode.{status}", (exc.status(), exc.message())
        assert message in (exc.message() or ""), exc.message()
        return
    raise AssertionError(f"expected {status} ({message!r}), the call succeeded")


def typed_request(model: str, rows: Sequence[Sequence[float]], datatype: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="features", datatype=datatype, shape=[len(rows), len(rows[0])])
    field = {"FP32": tensor.contents.fp32_contents, "FP64": tensor.contents.fp64_contents}[datatype]
    field.extend(value for row in rows for value in row)
    return request


@check
def server_is_live_and_ready(context: Context) -> None:
    client = context.client
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata().name == "predserve"


@check
def model_readiness(context: Context) -> None:
    client, expected = context.client, context.expected
    assert client.is_model_ready("iris_classifier")
    assert client.is_model_ready("iris_classifier", str(expected["first_set"]))
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("iris_classifier", "999999")


@check
def model_metadata(context: Context) -> None:
    client, expected = context.client, context.expected
    metadata = client.get_model_metadata("iris_classifier", as_json=True)
    assert metadata["name"] == "iris_classifier"
    assert metadata["versions"] == [str(expected["current_set"]), str(expected["first_set"])]
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP64", "shape": ["-1", "4"]}], metadata
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": ["-1"]},
        {"name": "predict_proba", "datatype": "FP64", "shape": ["-1", "3"]},
    ], metadata
    sizer = client.get_model_metadata("sizer")
    assert [(o.name, o.datatype) for o in sizer.outputs] == [("predict", "BYTES"), ("predict_proba", "FP64")]


@check
def raw_fp64_inference_matches_predserve_api(context: Context) -> None:
    client, expected = context.client, context.expected
    result = infer(client, "iris_classifier", expected["probes"])
    assert result.get_response().model_version == str(expected["current_set"])
    assert result.as_numpy("predict").tolist() == expected["iris_fp64"]["predict"]
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), expected["iris_fp64"]["predict_proba"])


@check
def raw_fp32_inference_matches_predserve_api(context: Context) -> None:
    client, expected = context.client, context.expected
    result = infer(client, "iris_classifier", expected["probes"], np.float32, "FP32", ["predict", "predict_proba"])
    assert result.as_numpy("predict").dtype == np.int64
    assert result.as_numpy("predict").tolist() == expected["iris_fp32"]["predict"]
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), expected["iris_fp32"]["predict_proba"])


@check
def typed_inference_matches_predserve_api(context: Context) -> None:
    expected = context.expected
    for datatype, answers in (("FP64", expected["iris_fp64"]), ("FP32", expected["iris_fp32"])):
        response = context.stub.ModelInfer(typed_request("iris_classifier", expected["probes"], datatype))
        assert not response.raw_output_contents, "typed input, typed output"
        predict, proba = response.outputs
        assert (predict.name, predict.datatype, list(predict.shape)) == ("predict", "INT64", [4])
        assert list(predict.contents.int64_contents) == answers["predict"]
        assert (proba.name, proba.datatype, list(proba.shape)) == ("predict_proba", "FP64", [4, 3])
        probabilities = np.asarray(proba.contents.fp64_contents).reshape(4, 3)
        np.testing.assert_array_equal(probabilities, answers["predict_proba"])


@check
def string_labels(context: Context) -> None:
    client, expected = context.client, context.expected
    result = infer(client, "sizer", expected["sizer_rows"], outputs=["predict"])
    assert [label.decode() for label in result.as_numpy("predict")] == expected["sizer"]["predict"]
    typed = context.stub.ModelInfer(typed_request("sizer", expected["sizer_rows"], "FP64"))
    assert [label.decode() for label in typed.outputs[0].contents.bytes_contents] == expected["sizer"]["predict"]


@check
def probabilities_only(context: Context) -> None:
    client, expected = context.client, context.expected
    result = infer(client, "iris_classifier", expected["probes"], outputs=["predict_proba"])
    assert result.as_numpy("predict") is None
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), expected["iris_fp64"]["predict_proba"])


@check
def regressor(context: Context) -> None:
    client, expected = context.client, context.expected
    result = infer(client, "diabetes_ridge", expected["diabetes_rows"])
    assert result.as_numpy("predict").dtype == np.float64
    assert result.as_numpy("predict").tolist() == expected["diabetes"]["predict"]
    assert result.as_numpy("predict_proba") is None


@check
def pinned_version(context: Context) -> None:
    client, expected = context.client, context.expected
    version = str(expected["first_set"])
    result = infer(client, "iris_classifier", expected["probes"], version=version)
    assert result.get_response().model_version == version
    assert result.as_numpy("predict").tolist() == expected["iris_pinned"]["predict"]
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), expected["iris_pinned"]["predict_proba"])


@check
def errors(context: Context) -> None:
    client, expected = context.client, context.expected
    probes = expected["probes"]
    expect_error(lambda: infer(client, "no_such_model", probes), "NOT_FOUND", "unknown model type 'no_such_model'")
    expect_error(lambda: client.get_model_metadata("no_such_model"), "NOT_FOUND", "unknown model type 'no_such_model'")
    expect_error(
        lambda: infer(client, "iris_classifier", [row[:3] for row in probes]),
        "INVALID_ARGUMENT",
        "rows have 3 features, model type expects 4",
    )
    expect_error(
        lambda: infer(client, "iris_classifier", probes, np.float16, "FP16"),
        "INVALID_ARGUMENT",
        "input 'features' has datatype 'FP16'; use one of FP32, FP64, INT32, INT64",
    )
    expect_error(
        lambda: infer(client, "iris_classifier", probes, outputs=["scores"]),
        "INVALID_ARGUMENT",
        "model 'iris_classifier' has no output 'scores'; it gives predict, predict_proba",
    )
    expect_error(
        lambda: infer(client, "iris_classifier", probes, version="latest"),
        "INVALID_ARGUMENT",
        "model version 'latest' is not a prediction set id",
    )
    expect_error(
        lambda: infer(client, "iris_classifier", probes, version="999999"),
        "NOT_FOUND",
        "prediction set 999999 does not exist",
    )
    short = typed_request("iris_classifier", probes, "FP64")
    short.inputs[0].ClearField("contents")
    short.raw_input_contents.append(np.asarray(probes, dtype="<f8").tobytes()[:-8])
    try:
        context.stub.ModelInfer(short)
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc
        assert exc.details() == "input 'features': raw contents hold 120 bytes; shape [4, 4] in FP64 needs 128"
    else:
        raise AssertionError("a short raw input was accepted")


def target_and_expected(description: str | None) -> tuple[str, dict[str, Any]]:
    """--target and the answers the test computed (--expected, a JSON file), as tests/support.py passes them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", required=True)
    parser.add_argument("--expected", required=True)
    args = parser.parse_args()
    with open(args.expected) as file:
        return args.target, json.load(file)


def run_checks(checks: Sequence[tuple[str, Callable[[], None]]]) -> int:
    """Each check in turn, "ok NAME" or "FAILED NAME" and its traceback, then the count; 1 if any failed."""
    failed = 0
    for name, check in checks:
        try:
            check()
        except Exception:
            failed += 1
            print(f"FAILED {name}:\n{traceback.format_exc()}")
        else:
            print(f"ok {name}")
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    target, expected = target_and_expected(__doc__)
    client = triton.InferenceServerClient(target)
    with grpc.insecure_channel(target) as channel:
        context = Context(client, service_pb2_grpc.GRPCInferenceServiceStub(channel), expected)
        code = run_checks([(function.__name__, functools.partial(function, context)) for function in CHECKS])
    client.close()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
