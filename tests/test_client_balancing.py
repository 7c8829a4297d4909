"""The client spreads calls round robin over several replicas, and only over those whose health is SERVING.

Two in-process gRPC servers stand in for replicas: each answers Predict with its own number, so the test
sees where every call went, and flips its health status as a stopping replica would.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from harness.waiting import wait_until
from predserve.client.cli import main as cli_main
from predserve.client.library import (
    BALANCED_SCHEMES,
    HEALTH_SERVICE,
    PredserveClient,
    PredserveClientError,
    channel_target,
)
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc


class NumberedReplica(pb_grpc.PredserveServicer):
    def __init__(self, number: int) -> None:
        self.number = number

    def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:  # noqa: N802
        return pb.PredictResponse(model_type=request.model_type, prediction_set_id=self.number)


class Replica:
    def __init__(self, number: int) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_PredserveServicer_to_server(NumberedReplica(number), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.set_serving(True)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(HEALTH_SERVICE, status)


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started = [Replica(1), Replica(2)]
    yield started
    for replica in started:
        replica.health.enter_graceful_shutdown()  # ends the client's health Watch streams first
        # Stopped from a daemon thread with a bound: a stop that blocks inside gRPC must not hang the suite.
        stopper = threading.Thread(target=lambda server=replica.server: server.stop(0).wait(5), daemon=True)
        stopper.start()
        stopper.join(10)


def where_calls_go(client: PredserveClient, calls: int = 40) -> collections.Counter[int]:
    return collections.Counter(client.predict("m", [[1.0]]).prediction_set_id for _ in range(calls))


def eventually(client: PredserveClient, expected: set[int], timeout: float = 10.0) -> collections.Counter[int]:
    """Where calls go once they go to exactly the `expected` replicas."""
    wait_until(lambda: set(where_calls_go(client, 10)) == expected, timeout, f"calls to go to replicas {expected}")
    return where_calls_go(client)


def test_calls_spread_over_serving_replicas_only(replicas: list[Replica]) -> None:
    targets = [f"127.0.0.1:{r.port}" for r in replicas]
    with PredserveClient(targets, deadline_seconds=5) as client:
        client.wait_until_ready(10)
        spread = eventually(client, {1, 2})
        assert spread[1] == spread[2] == 20  # round robin, not pick-first

        replicas[1].set_serving(False)  # e.g. a replica that received SIGTERM
        assert eventually(client, {1}) == {1: 40}

        replicas[1].set_serving(True)
        assert set(eventually(client, {1, 2})) == {1, 2}

    with PredserveClient(",".join(targets), deadline_seconds=2, max_attempts=1) as client:
        client.wait_until_ready(10)
        for replica in replicas:
            replica.set_serving(False)

        def answered() -> bool:
            client.predict("m", [[1.0]])
            return False  # keep calling until a call fails

        with pytest.raises(PredserveClientError) as nobody:
            wait_until(answered, 10, "a Predict to fail once no replica is serving")
        assert nobody.value.code is grpc.StatusCode.UNAVAILABLE


def test_targets_become_one_grpc_target() -> None:
    assert channel_target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert not channel_target("127.0.0.1:50051").startswith(BALANCED_SCHEMES)  # one server: pick_first
    assert channel_target("dns:///predserve-headless.ml.svc:50051") == "dns:///predserve-headless.ml.svc:50051"
    assert channel_target(["127.0.0.1:1", "127.0.0.2:2"]) == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert channel_target("127.0.0.1:1, 127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert channel_target("ipv4:127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError, match="give one DNS name"):
        channel_target("replica-a:50051,replica-b:50051")
    with pytest.raises(ValueError, match="must all be IPv4 or all IPv6"):
        channel_target(["127.0.0.1:1", "[::1]:2"])


def test_cli_refuses_several_host_names_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--target", "a:1,b:2", "health"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("predserve: target 'a:1': several targets must be IP:PORT") and error.count("\n") == 1
