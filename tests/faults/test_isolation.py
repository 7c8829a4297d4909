"""Admin work never starves the data plane: idle streams are reaped, Trains are bounded, fits use few cores.

Each test keeps asking Predict and health, with a 2 s deadline, while the admin calls do their worst.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DATA_PLANE_DEADLINE = 2.0


@pytest.fixture
def busy_server(tmp_path: Path) -> Iterator[ServerProcess]:
    # Room for all 40 silent streams at once, so that each waits to be reaped; at the default bound (8) the
    # others would be refused at once (tests/faults/test_slots.py).
    args = ["--stream-idle-seconds", "5", "--max-concurrent-streams", "40"]
    server = ServerProcess(tmp_path, extra_args=args).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        client.ingest("big", rows * 20, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    yield server
    server.kill()


def data_plane_answers(channel: grpc.Channel, rounds: int) -> list[float]:
    """Seconds each Predict and health Check took; any failure (a missed deadline included) raises."""
    predict = pb_grpc.PredserveStub(channel).Predict
    check = health_pb2_grpc.HealthStub(channel).Check
    request = pb.PredictRequest(model_type="iris_classifier", rows=[pb.Row(features=r) for r in IRIS_PROBES])
    took = []
    for _ in range(rounds):
        started = time.monotonic()
        predict(request, timeout=DATA_PLANE_DEADLINE)
        check(health_pb2.HealthCheckRequest(service=""), timeout=DATA_PLANE_DEADLINE)
        took.append(time.monotonic() - started)
        time.sleep(0.05)
    return took


def test_forty_idle_streams_leave_predict_and_health_answering(busy_server: ServerProcess) -> None:
    """40 IngestHistory streams fall silent: Predict and health answer within 2 s, the streams are cancelled."""
    release = threading.Event()

    def one_message_then_silence() -> Iterator[pb.IngestHistoryRequest]:
        yield pb.IngestHistoryRequest(dataset="idle", rows=[pb.Row(features=[1.0], target=pb.Target(integer=1))])
        release.wait(60)

    with grpc.insecure_channel(busy_server.target) as channel:
        ingest = pb_grpc.PredserveStub(channel).IngestHistory
        streams = [ingest.future(one_message_then_silence(), timeout=60) for _ in range(40)]
        time.sleep(0.5)  # every stream is open and holds its thread
        assert all(not stream.done() for stream in streams)
        assert max(data_plane_answers(channel, 20)) < DATA_PLANE_DEADLINE

        # Past --stream-idle-seconds every silent stream is cancelled, and stores nothing.
        codes = {stream.exception(timeout=30).code() for stream in streams}  # type: ignore[union-attr]
        release.set()
    assert codes == {grpc.StatusCode.CANCELLED}
    with busy_server.client() as client:
        assert "idle" not in [m.model_type for m in client.list_models().models]
    assert "cancelling a client stream silent for over 5s (--stream-idle-seconds)" in busy_server.log()
    assert "Traceback" not in busy_server.log()


def test_twenty_four_trains_are_bounded_and_predict_keeps_answering(busy_server: ServerProcess) -> None:
    """24 concurrent forest Trains: beyond the bound RESOURCE_EXHAUSTED at once, Predict answers within 2 s."""
    request = pb.TrainRequest(
        model_type="forest", algorithm="random_forest", dataset="big", params={"n_estimators": "150"}
    )
    with grpc.insecure_channel(busy_server.target) as channel:
        train = pb_grpc.PredserveStub(channel).Train
        with ThreadPoolExecutor(max_workers=1) as prober:
            probing = prober.submit(data_plane_answers, channel, 30)
            trains = [train.future(request, timeout=120) for _ in range(24)]
            outcomes = [t.exception() for t in trains]
            took = probing.result()
    refused = [o for o in outcomes if o is not None]
    assert all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused), refused  # type: ignore[attr-defined]
    assert all("--max-concurrent-trains" in (o.details() or "") for o in refused)  # type: ignore[attr-defined]
    assert 2 <= 24 - len(refused) < 24 and len(refused) >= 10
    assert max(took) < DATA_PLANE_DEADLINE


def test_a_fit_asking_for_every_core_gets_the_servers_share(busy_server: ServerProcess) -> None:
    """A Train asking n_jobs=-1: the fit gets --fit-jobs cores, and the recorded parameters say so."""
    with busy_server.client() as client:
        client.train("capped", dataset="iris", algorithm="random_forest", params={"n_estimators": "5", "n_jobs": "-1"})
        (recorded,) = client.list_prediction_sets("capped").prediction_sets
    assert recorded.params["n_jobs"] == "1"
