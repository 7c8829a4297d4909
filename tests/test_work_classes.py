"""Slots for each class of work (server/api/admitting.py), in process: which class each method is, unary calls
past their slots refused with the option's name, and health on threads of its own that watchers do not hold."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from predserve.protos import grpc_predict_v2_pb2, predserve_pb2
from predserve.server.api.admitting import HEALTH_THREADS, AdmissionInterceptor, CallSlots, WorkClass, work_class

PREDICT = "/predserve.v1.Predserve/Predict"
CALL_SLOTS = 2


def methods(descriptor: object, service: str) -> dict[str, bool]:
    """Every method of `service` by full name, with whether its requests stream."""
    found = descriptor.services_by_name[service]  # type: ignore[attr-defined]
    return {f"/{found.full_name}/{m.name}": m.client_streaming for m in found.methods}


def test_every_method_has_its_class() -> None:
    classes = {
        name: work_class(name, streaming)
        for descriptor, service in (
            (predserve_pb2.DESCRIPTOR, "Predserve"),
            (grpc_predict_v2_pb2.DESCRIPTOR, "GRPCInferenceService"),
            (health_pb2.DESCRIPTOR, "Health"),
        )
        for name, streaming in methods(descriptor, service).items()
    }
    assert {name for name, work in classes.items() if work is not WorkClass.CALLS} == {
        "/predserve.v1.Predserve/Train",
        "/predserve.v1.Predserve/IngestHistory",
        "/predserve.v1.Predserve/ImportModel",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/List",
        "/grpc.health.v1.Health/Watch",
    }
    assert classes["/predserve.v1.Predserve/Train"] is WorkClass.TRAINS
    assert classes["/predserve.v1.Predserve/IngestHistory"] is WorkClass.STREAMS
    assert classes["/grpc.health.v1.Health/Watch"] is WorkClass.HEALTH
    assert work_class("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True) is WorkClass.REFLECTION
    # A client stream nobody classified may wait for its messages as IngestHistory does: it is a stream.
    assert work_class("/predserve.v1.Predserve/SomeNewUpload", True) is WorkClass.STREAMS


class Gated:
    """An in-process server whose Predict waits at a gate, behind the admission interceptor."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        slots = CallSlots(calls=CALL_SLOTS, streams=1, trains=1)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=slots.threads),
            interceptors=[AdmissionInterceptor(slots)],
            maximum_concurrent_rpcs=None,
        )
        handlers = {"Predict": grpc.unary_unary_rpc_method_handler(self._predict)}
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("predserve.v1.Predserve", handlers)])
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _predict(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.entered.release()
        self.gate.wait(10)
        return b"answer"


@pytest.fixture
def gated() -> Iterator[Gated]:
    server = Gated()
    yield server
    server.gate.set()
    server.server.stop(None)


def test_calls_past_their_slots_are_refused_and_health_answers(gated: Gated) -> None:
    with grpc.insecure_channel(gated.target) as channel:
        predict = channel.unary_unary(PREDICT)
        held = [predict.future(b"", timeout=10) for _ in range(CALL_SLOTS)]
        for _ in held:
            assert gated.entered.acquire(timeout=5)
        with pytest.raises(grpc.RpcError) as refused:
            predict(b"", timeout=2)
        checked = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        gated.gate.set()
        answers = [call.result() for call in held]
        assert predict(b"", timeout=2) == b"answer"  # the slots came back
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == (
        f"{CALL_SLOTS} Predict, ModelInfer, listing and other unary calls already running, the limit "
        "(--max-concurrent-rpcs); try again later"
    )
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert answers == [b"answer"] * CALL_SLOTS


def test_health_watchers_hold_no_thread(gated: Gated) -> None:
    """Far more watchers than health's threads: each has its first answer, and Check still answers at once."""
    with grpc.insecure_channel(gated.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=5) for _ in range(HEALTH_THREADS * 10)]
        try:
            assert {next(watch).status for watch in watches} == {health_pb2.HealthCheckResponse.SERVING}
            assert (
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING
            )
        finally:
            for watch in watches:
                watch.cancel()
