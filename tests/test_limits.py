"""Resource limits over real calls: rows per request, message size, concurrent streams, Train's deadline."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.waiting import wait_until
from predserve.client.library import ResourceExhaustedError
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.support import ServerProcess

MAX_ROWS = 20
MAX_MESSAGE = 64 * 1024
MAX_CONCURRENT = 2
MAX_STREAMS = 2
TRAIN_SECONDS = 0.05


def rows(count: int, width: int = 2) -> list[tuple[list[float], int]]:
    return [([float(i)] + [float(i % 3)] * (width - 1), i % 2) for i in range(count)]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = [
        "--max-rows-per-request",
        str(MAX_ROWS),
        "--max-message-bytes",
        str(MAX_MESSAGE),
        "--max-concurrent-rpcs",
        str(MAX_CONCURRENT),
        "--max-concurrent-streams",
        str(MAX_STREAMS),
        "--train-deadline-seconds",
        str(TRAIN_SECONDS),
    ]
    process = ServerProcess(tmp_path_factory.mktemp("limits"), extra_args=args).start()
    yield process
    process.kill()


def test_too_many_rows_in_one_request_are_refused(limited: ServerProcess) -> None:
    limit_text = f"more than the limit of {MAX_ROWS} rows per request (--max-rows-per-request)"
    with limited.client() as client:
        assert client.ingest("small", rows(MAX_ROWS)).total_rows == MAX_ROWS
        with pytest.raises(ResourceExhaustedError) as ingest:
            client.ingest("small", rows(MAX_ROWS + 5))
        with pytest.raises(ResourceExhaustedError) as predict:
            client.predict("anything", [r for r, _ in rows(MAX_ROWS + 1)])
        with grpc.insecure_channel(limited.target) as channel:
            inline = [pb.Row(features=f, target=pb.Target(integer=t)) for f, t in rows(MAX_ROWS + 1)]
            with pytest.raises(grpc.RpcError) as train:
                pb_grpc.PredserveStub(channel).Train(
                    pb.TrainRequest(model_type="inline", algorithm="logistic_regression", rows=inline), timeout=10
                )
        assert client.ingest("small", rows(1)).total_rows == MAX_ROWS + 1  # the refused stream stored nothing
    assert ingest.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ingest.value.details == (  # one IngestHistory stream is one batch; the message says how to proceed
        f"this IngestHistory batch has {MAX_ROWS + 5} rows so far, more than the limit of {MAX_ROWS} rows per batch "
        f"(--max-rows-per-request): send at most {MAX_ROWS} rows per IngestHistory stream, as consecutive batches; "
        "the predserve CLI and client library batch for you"
    )
    assert predict.value.details == f"the request has {MAX_ROWS + 1} rows, {limit_text}"
    assert train.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert train.value.details() == f"the request has {MAX_ROWS + 1} rows, {limit_text}"


def test_a_message_over_the_size_limit_is_refused(limited: ServerProcess) -> None:
    wide = [r for r, _ in rows(10, width=1000)]  # 80,000 bytes of doubles
    with limited.client() as client:
        with pytest.raises(ResourceExhaustedError) as error:
            client.predict("anything", wide)
    assert error.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.value.details and f"vs. {MAX_MESSAGE})" in error.value.details


def test_a_train_past_its_deadline_records_nothing(limited: ServerProcess) -> None:
    with limited.client() as client:
        client.ingest("slow", rows(MAX_ROWS))
        with pytest.raises(ResourceExhaustedError) as error:
            client.train("slow_forest", dataset="slow", algorithm="random_forest", params={"n_estimators": 400})
        assert [m.model_type for m in client.list_models().models] == []
    assert error.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.details.startswith(
        f"Train ran past the limit of {TRAIN_SECONDS:g}s per Train (--train-deadline-seconds)"
    )
    assert error.value.details.endswith("; nothing was recorded")
    assert list(limited.models_dir.iterdir()) == []


def test_streams_beyond_their_slots_are_refused_and_health_answers(limited: ServerProcess) -> None:
    release = threading.Event()

    def held_stream() -> Iterator[pb.IngestHistoryRequest]:
        yield pb.IngestHistoryRequest(dataset="held", rows=[pb.Row(features=[1.0], target=pb.Target(integer=0))])
        release.wait(30)  # the server's handler waits for the rest of the stream meanwhile

    # More held streams than their slots, at once: the ones past the slots are refused, naming the option, and
    # health answers while the slots are held.
    with grpc.insecure_channel(limited.target) as channel:
        ingest = pb_grpc.PredserveStub(channel).IngestHistory
        held = [ingest.future(held_stream(), timeout=60) for _ in range(MAX_STREAMS + 2)]
        try:
            wait_until(lambda: sum(call.done() for call in held) >= 2, 10, "2 streams to be refused")
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        finally:
            release.set()
        outcomes = [_outcome(call) for call in held]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    refusal = (
        f"{MAX_STREAMS} IngestHistory and ImportModel streams already running, the limit (--max-concurrent-streams); "
        "try again later"
    )
    assert sorted(outcomes) == [refusal] * 2 + ["ok"] * MAX_STREAMS


def _outcome(call: grpc.Future) -> str:
    try:
        return "ok" if call.result().rows_added == 1 else "wrong answer"
    except grpc.RpcError as exc:
        return exc.details() or exc.code().name
