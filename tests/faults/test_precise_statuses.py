"""Requests that once ended in INTERNAL get a precise status and a message naming the problem (issue 12, item 5).

Text labels for a regressor, an artifact that prints in the probe process, and bytes that are not the
method's request message: each answers FAILED_PRECONDITION or INVALID_ARGUMENT, never INTERNAL, and
grpcio logs no traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import joblib
import pytest

from predserve.client.library import FailedPreconditionError
from predserve.protos import grpc_predict_v2_pb2, predserve_pb2
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.faults.baseline import Launch
from tests.faults.noisy_artifacts import PrintsAndExits, RidgePrintingAtExit
from tests.support import ServerProcess, diabetes_rows

pytestmark = [pytest.mark.faults]

# A field number with wire type 7, which does not exist: no request message decodes these bytes.
GARBAGE = b"\xff" * 8

METHODS = [
    (f"/{service.full_name}/{method.name}", method.client_streaming)
    for service in (
        predserve_pb2.DESCRIPTOR.services_by_name["Predserve"],
        grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    )
    for method in service.methods
]


TRUSTING_NOISY = ["--trusted-module", "tests.faults.noisy_artifacts"]


def _ridge() -> RidgePrintingAtExit:
    rows = diabetes_rows()
    return RidgePrintingAtExit().fit([features for features, _ in rows], [target for _, target in rows])


def test_regressor_on_inline_text_labels_is_a_failed_precondition(
    server: ServerProcess, record_property: Callable[[str, object], None]
) -> None:
    """A regressor recipe on inline all-text labels: FAILED_PRECONDITION naming the text labels."""
    record_property("fault", "a regressor recipe given inline text labels: FAILED_PRECONDITION, not INTERNAL")
    rows = [pb.Row(features=[float(i), float(i % 3)], target=pb.Target(label=f"l{i % 2}")) for i in range(20)]
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.PredserveStub(channel).Train(pb.TrainRequest(model_type="labels", algorithm="ridge", rows=rows))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "algorithm ridge is a regressor but the targets are text labels" in caught.value.details()


def test_an_artifact_printing_at_exit_still_gives_the_probes_answer(
    launch: Launch, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """An imported pickle that prints after the probe's answer (at exit): imported, the answer is found."""
    record_property("fault", "an imported pickle prints at exit, after the probe's answer: imported as usual")
    server = launch(tmp_path, extra_args=TRUSTING_NOISY).start()
    artifact = tmp_path / "noisy.joblib"
    joblib.dump(_ridge(), artifact)
    with server.client() as client:
        response = client.import_model("noisy_ridge", artifact.read_bytes())
        assert response.model_type == "noisy_ridge"
        assert [m.model_type for m in client.list_models().models if m.loaded] == ["noisy_ridge"]


def test_an_artifact_that_prints_and_exits_without_an_answer_is_a_failed_precondition(
    launch: Launch, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """An imported pickle prints and ends the probe before its answer: FAILED_PRECONDITION quoting the output."""
    record_property("fault", "an imported pickle prints and exits the probe before it answers: FAILED_PRECONDITION")
    server = launch(tmp_path, extra_args=TRUSTING_NOISY).start()
    artifact = tmp_path / "silent.joblib"
    joblib.dump(PrintsAndExits(), artifact)
    with server.client() as client, pytest.raises(FailedPreconditionError) as caught:
        client.import_model("silent", artifact.read_bytes())
    assert "the probe process loading the artifact gave no answer" in caught.value.details
    assert "not an answer" in caught.value.details
    with server.client() as client:
        assert [m.model_type for m in client.list_models().models] == []
    assert "Traceback" not in server.log()


def test_undecodable_requests_are_invalid_arguments_on_every_method(
    server: ServerProcess, record_property: Callable[[str, object], None]
) -> None:
    """Bytes that are no request message, on each of the 15 methods: INVALID_ARGUMENT naming it, no traceback."""
    record_property("fault", "undecodable request bytes on all 15 methods: INVALID_ARGUMENT naming the method")
    assert len(METHODS) == 15
    answers: dict[str, tuple[grpc.StatusCode, str]] = {}
    with grpc.insecure_channel(server.target) as channel:
        for method, client_streaming in METHODS:
            try:
                if client_streaming:
                    channel.stream_unary(method, request_serializer=None, response_deserializer=None)(
                        _garbage_stream(), timeout=30
                    )
                else:
                    channel.unary_unary(method, request_serializer=None, response_deserializer=None)(
                        GARBAGE, timeout=30
                    )
            except grpc.RpcError as exc:
                answers[method] = (exc.code(), exc.details() or "")
            else:
                answers[method] = (grpc.StatusCode.OK, "")
    for method, (code, details) in answers.items():
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert method in details and "could not be decoded" in details, details
    log = server.log()
    assert "Traceback" not in log
    assert "Exception deserializing" not in log
    with server.client() as client:  # still serving
        assert client.health() == "SERVING"


def _garbage_stream() -> Iterator[bytes]:
    yield GARBAGE


def test_authentication_is_checked_before_decoding(
    launch: Launch, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Undecodable bytes without the token a method needs: UNAUTHENTICATED, so no caller probes the decoder."""
    record_property("fault", "undecodable request bytes without a token: UNAUTHENTICATED before any decoding")
    server = launch(tmp_path, env={"PREDSERVE_ADMIN_TOKEN": "a" * 32, "PREDSERVE_PREDICT_TOKEN": "p" * 32}).start()
    with grpc.insecure_channel(server.target) as channel:
        for method in ("/predserve.v1.Predserve/Train", "/inference.GRPCInferenceService/ModelInfer"):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(method, request_serializer=None, response_deserializer=None)(GARBAGE, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        with pytest.raises(grpc.RpcError) as caught:  # an open method still decodes first
            channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive", request_serializer=None, response_deserializer=None
            )(GARBAGE, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
