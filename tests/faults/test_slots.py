"""Each class of work has slots of its own (issue 22 item 5): idle client streams fill theirs and the ones past
it are refused at once, while health, Predict and ModelInfer keep answering within a 2 s deadline.

The attack this guards against: 64 IngestHistory streams that send one message and wait used to fill
--max-concurrent-rpcs, and health and Predict then answered RESOURCE_EXHAUSTED until the streams were reaped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.waiting import wait_until
from predserve.protos import grpc_predict_v2_pb2 as v2
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

pytestmark = [pytest.mark.faults]  # about 5 s in all: one server start, one Train, then under a second a test

DATA_PLANE_DEADLINE = 2.0
STREAM_SLOTS = 8  # --max-concurrent-streams' default
REFUSAL = (
    f"{STREAM_SLOTS} IngestHistory and ImportModel streams already running, the limit (--max-concurrent-streams); "
    "try again later"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server at its default settings, iris trained."""
    server = ServerProcess(tmp_path_factory.mktemp("slots")).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    yield server
    server.kill()


def data_plane_answers(target: str) -> None:
    """health Check, Predict and ModelInfer, over a connection of their own, each within the deadline."""
    infer = v2.ModelInferRequest(
        model_name="iris_classifier",
        inputs=[v2.ModelInferRequest.InferInputTensor(name="features", datatype="FP64", shape=[len(IRIS_PROBES), 4])],
        raw_input_contents=[np.asarray(IRIS_PROBES, dtype="<f8").tobytes()],
    )
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=DATA_PLANE_DEADLINE)
        predicted = pb_grpc.PredserveStub(channel).Predict(
            pb.PredictRequest(model_type="iris_classifier", rows=[pb.Row(features=r) for r in IRIS_PROBES]),
            timeout=DATA_PLANE_DEADLINE,
        )
        inferred = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer, timeout=DATA_PLANE_DEADLINE)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(predicted.predictions) == len(IRIS_PROBES)
    assert list(inferred.outputs[0].shape) == [len(IRIS_PROBES)]


class IdleStreams:
    """`count` IngestHistory streams over one connection, each sending one row and then waiting to be released."""

    def __init__(self, target: str, count: int, dataset: str) -> None:
        self.release = threading.Event()
        self.channel = grpc.insecure_channel(target)
        ingest = pb_grpc.PredserveStub(self.channel).IngestHistory
        self.calls = [ingest.future(self._one_message_then_silence(dataset), timeout=60) for _ in range(count)]

    def _one_message_then_silence(self, dataset: str) -> Iterator[pb.IngestHistoryRequest]:
        yield pb.IngestHistoryRequest(dataset=dataset, rows=[pb.Row(features=[1.0], target=pb.Target(integer=1))])
        self.release.wait(60)

    def refused(self) -> list[grpc.RpcError]:
        return [call.exception() for call in self.calls if call.done() and call.exception() is not None]

    def open(self) -> list[grpc.Future]:
        return [call for call in self.calls if not call.done()]

    def close(self) -> list[int]:
        """Ends every stream still open; the rows each one stored."""
        self.release.set()
        try:
            return [call.result(timeout=30).rows_added for call in self.calls if call.exception(timeout=30) is None]
        finally:
            self.channel.close()


@pytest.mark.parametrize("count", [64, 200])
def test_idle_streams_never_refuse_health_predict_or_model_infer(trained: ServerProcess, count: int) -> None:
    """Many IngestHistory streams send one message and wait: past their slots they are refused, health answers."""
    streams = IdleStreams(trained.target, count, f"idle_{count}")
    try:
        data_plane_answers(trained.target)  # while the burst is being admitted or refused
        wait_until(lambda: len(streams.refused()) >= count - STREAM_SLOTS, 10, f"{count - STREAM_SLOTS} refusals")
        data_plane_answers(trained.target)  # while every stream slot is held
        refused = streams.refused()
        assert len(streams.open()) == STREAM_SLOTS
    finally:
        stored = streams.close()
    assert len(refused) == count - STREAM_SLOTS
    assert {(error.code(), error.details()) for error in refused} == {(grpc.StatusCode.RESOURCE_EXHAUSTED, REFUSAL)}
    assert stored == [1] * STREAM_SLOTS

    # The refused streams left no slot behind: a full set is admitted again, and the one past it refused.
    again = IdleStreams(trained.target, STREAM_SLOTS + 1, f"again_{count}")
    try:
        wait_until(lambda: len(again.refused()) == 1, 10, "the stream past the slots to be refused")
        assert len(again.open()) == STREAM_SLOTS
    finally:
        stored_again = again.close()
    assert stored_again == [1] * STREAM_SLOTS
    assert "Traceback" not in trained.log()


def test_a_stream_past_the_slots_is_refused_at_once(trained: ServerProcess) -> None:
    """The slots are held by idle streams: one more is refused mid-upload within 2 s, not queued behind them."""
    held = IdleStreams(trained.target, STREAM_SLOTS, "held")
    late = None
    try:
        time.sleep(0.5)  # a refusal would come in milliseconds
        assert len(held.open()) == STREAM_SLOTS
        late = IdleStreams(trained.target, 1, "late")
        error = late.calls[0].exception(timeout=DATA_PLANE_DEADLINE)
    finally:
        held.close()
        if late is not None:
            late.close()
    assert error is not None
    assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, REFUSAL)
