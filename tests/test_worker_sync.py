"""A serving process answers only from what the database says is current (issue 13, item 2).

A --workers replacement is forked from the parent's start-up copy of the models, which may be sets old
or lack a model type trained since; it syncs with the database before it binds. A process that cannot
sync is NOT_SERVING and refuses Predict with UNAVAILABLE, so clients go elsewhere, until a sync succeeds.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.waiting import wait_until
from predserve.client.library import PredserveClient, PredserveClientError
from predserve.protos import grpc_predict_v2_pb2 as v2
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from predserve.server.app import (
    SERVICE_NAME,
    V2_SERVICE_NAME,
    Services,
    build_server,
    build_services,
)
from predserve.server.domain import HistoryRow
from predserve.server.errors import Unavailable
from predserve.server.publishing import MODEL_HEALTH_PREFIX
from predserve.server.services.training import TrainCommand
from predserve.server.settings import ServerConfig
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

pytestmark = [pytest.mark.slow]

NOT_SYNCED = "this server has not synced with the registry database yet"
KILLS = 10


def _children(parent_pid: int) -> list[int]:
    text = Path(f"/proc/{parent_pid}/task/{parent_pid}/children").read_text()
    return sorted(int(pid) for pid in text.split())


@dataclass(frozen=True)
class Answer:
    model_type: str
    set_id: int | None = None  # None when refused
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""


def predict_over_a_new_connection(target: str, model_type: str) -> Answer:
    """One Predict on a TCP connection of its own, so SO_REUSEPORT spreads the calls over the workers (grpc
    shares one connection among a process's channels to a target unless told not to); no retries, so the
    answer is one worker's own."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        request = pb.PredictRequest(model_type=model_type, rows=[pb.Row(features=row) for row in IRIS_PROBES])
        try:
            return Answer(model_type, pb_grpc.PredserveStub(channel).Predict(request, timeout=5).prediction_set_id)
        except grpc.RpcError as exc:
            return Answer(model_type, code=exc.code(), details=exc.details() or "")


def _predict_until(stop: threading.Event, target: str, model_types: list[str]) -> list[Answer]:
    answers: list[Answer] = []
    while not stop.is_set():
        answers.extend(predict_over_a_new_connection(target, model_type) for model_type in model_types)
    return answers


def _kill_and_await_replacement(server: ServerProcess, parent: int, victim: int) -> None:
    ready_lines = server.log().count("predserve ready on 127.0.0.1")
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: victim not in _children(parent) and len(_children(parent)) == 2, 30, f"a replacement for {victim}"
    )
    wait_until(
        lambda: server.log().count("predserve ready on 127.0.0.1") > ready_lines, 30, "the replacement to be ready"
    )


def test_a_replacement_worker_serves_only_the_current_sets(tmp_path: Path) -> None:
    # A long reload interval: without the sync before binding, a replacement would answer from its fork
    # copy for seconds.
    args = ["--workers", "2", "--reload-interval", "3"]
    (tmp_path / "first").mkdir()
    first = ServerProcess(
        tmp_path / "first", db=tmp_path / "predictions.db", models_dir=tmp_path / "models", extra_args=args
    ).start()
    try:
        names, rows = iris_rows()
        with first.client() as client:
            client.ingest("iris", rows, names)
            old = client.train("iris_classifier", "iris", "logistic_regression").prediction_set_id
        assert first.stop() == 0
    finally:
        first.kill()

    # The parent's start-up copy, which every replacement is forked from, holds set `old` only.
    server = ServerProcess(tmp_path, extra_args=args).start()
    try:
        with server.client() as client:
            current = client.train("iris_classifier", "iris", "random_forest").prediction_set_id
            new_type = client.train("iris_new", "iris", "logistic_regression").prediction_set_id
        assert old != current

        def every_worker_serves_the_new_sets() -> bool:
            answers = [predict_over_a_new_connection(server.target, "iris_classifier") for _ in range(12)]
            answers += [predict_over_a_new_connection(server.target, "iris_new") for _ in range(12)]
            return {a.set_id for a in answers} == {current, new_type}

        wait_until(every_worker_serves_the_new_sets, 30, "both workers to serve the new sets")

        assert server.process is not None
        parent = server.process.pid
        stop = threading.Event()
        answers: list[Answer] = []
        load = threading.Thread(
            target=lambda: answers.extend(_predict_until(stop, server.target, ["iris_classifier", "iris_new"]))
        )
        load.start()
        try:
            for kill in range(KILLS):
                workers = _children(parent)
                assert len(workers) == 2, workers
                _kill_and_await_replacement(server, parent, workers[kill % 2])
                time.sleep(1.0)  # load on the fresh replacement, well inside its first reload interval
        finally:
            stop.set()
            load.join(timeout=30)

        outcome = Counter((a.model_type, a.set_id, a.code.name) for a in answers)
        served = {(a.model_type, a.set_id) for a in answers if a.code is grpc.StatusCode.OK}
        assert served == {("iris_classifier", current), ("iris_new", new_type)}, outcome
        # UNAVAILABLE from the killed worker's own connections is expected; any other refusal is not, nor is
        # one for want of a sync, since a replacement syncs before it binds.
        refused = [a for a in answers if a.code is not grpc.StatusCode.OK]
        assert all(a.code is grpc.StatusCode.UNAVAILABLE and NOT_SYNCED not in a.details for a in refused), refused
        assert sum(a.code is grpc.StatusCode.OK for a in answers) > 20 * KILLS, outcome
        log = server.log()
        assert log.count("predserve ready on 127.0.0.1") == 3 + KILLS
        assert "(0 model type(s)" not in log
        assert server.stop() == 0
    finally:
        server.kill()


@pytest.fixture
def unreachable(tmp_path: Path) -> Iterator[tuple[ServerConfig, Services, Path]]:
    """Services loaded with a trained iris_classifier, then their SQLite file made impossible to open
    (a directory where the file was): the state of a worker whose database went away."""
    config = dataclasses.replace(
        ServerConfig(), port=0, db_path=tmp_path / "registry.db", models_dir=tmp_path / "models"
    )
    seeding = build_services(config)
    seed_server, port, _ = build_server(config, seeding)
    names, rows = iris_rows()
    with PredserveClient(f"127.0.0.1:{port}") as client:
        client.ingest("iris", rows, names)
        client.train("iris_classifier", "iris", "logistic_regression")
    seed_server.stop(None)

    services = build_services(dataclasses.replace(config, reload_interval_seconds=0.05))
    aside = tmp_path / "registry.db.aside"
    config.db_path.rename(aside)
    config.db_path.mkdir()
    yield config, services, aside
    services.reloader.stop()


def test_a_process_that_cannot_sync_is_not_serving_and_refuses_predict(
    unreachable: tuple[ServerConfig, Services, Path],
) -> None:
    config, services, aside = unreachable
    assert services.reloader.sync_before_serving() is False
    with pytest.raises(Unavailable, match=f"^{NOT_SYNCED}: cannot open database"):
        services.prediction.predict("iris_classifier", IRIS_PROBES)
    assert services.prediction.server_ready() is False
    assert services.prediction.is_ready("iris_classifier") is False

    server, port, _ = build_server(config, services)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> str:
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

            for service in ("", SERVICE_NAME, V2_SERVICE_NAME, MODEL_HEALTH_PREFIX + "iris_classifier"):
                assert status(service) == "NOT_SERVING", service
            with PredserveClient(f"127.0.0.1:{port}", max_attempts=1) as client:
                with pytest.raises(PredserveClientError) as refused:
                    client.predict("iris_classifier", IRIS_PROBES)
            assert refused.value.code is grpc.StatusCode.UNAVAILABLE
            assert refused.value.details.startswith(f"{NOT_SYNCED}: cannot open database")
            inference = v2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused_v2:
                inference.ModelInfer(v2.ModelInferRequest(model_name="iris_classifier"), timeout=5)
            assert refused_v2.value.code() is grpc.StatusCode.UNAVAILABLE
            assert NOT_SYNCED in (refused_v2.value.details() or "")
            assert inference.ServerReady(v2.ServerReadyRequest(), timeout=5).ready is False

            # The reloader's ticks keep trying; the first that reaches the database lets the process serve.
            services.reloader.start()
            time.sleep(0.3)
            assert status("") == "NOT_SERVING"
            config.db_path.rmdir()
            aside.rename(config.db_path)
            wait_until(lambda: status("") == "SERVING", 10, "the process to sync and say SERVING")
            for service in (SERVICE_NAME, V2_SERVICE_NAME, MODEL_HEALTH_PREFIX + "iris_classifier"):
                assert status(service) == "SERVING", service
            with PredserveClient(f"127.0.0.1:{port}", max_attempts=1) as client:
                assert client.predict("iris_classifier", IRIS_PROBES).prediction_set_id == 1
            assert inference.ServerReady(v2.ServerReadyRequest(), timeout=5).ready is True
    finally:
        server.stop(None)


def test_with_live_reload_off_a_process_still_retries_its_first_sync(
    unreachable: tuple[ServerConfig, Services, Path],
) -> None:
    config, services, aside = unreachable
    services.reloader.interval = 0  # --reload-interval 0
    assert services.reloader.sync_before_serving() is False
    services.reloader.start()
    config.db_path.rmdir()
    aside.rename(config.db_path)
    wait_until(lambda: services.prediction.server_ready(), 10, "the first sync to succeed")
    assert services.prediction.predict("iris_classifier", IRIS_PROBES).prediction_set_id == 1


def test_a_process_that_syncs_serves_at_once(tmp_path: Path) -> None:
    services = build_services(ServerConfig(db_path=tmp_path / "registry.db", models_dir=tmp_path / "models"))
    assert services.reloader.sync_before_serving() is True
    assert services.prediction.server_ready() is True
    assert services.prediction.is_ready("iris_classifier") is False  # merely unknown, not refused


def test_a_set_this_process_made_current_meanwhile_is_not_adopted_again(tmp_path: Path) -> None:
    """A live-reload tick can read the new current set between a Train's commit and its swap in the same
    process; adopting it then must not load it a second time (nor count a reload)."""
    services = build_services(ServerConfig(db_path=tmp_path / "registry.db", models_dir=tmp_path / "models"))
    _, rows = iris_rows()
    command = TrainCommand(
        model_type="iris_classifier",
        algorithm="logistic_regression",
        rows=[HistoryRow(tuple(features), target) for features, target in rows],
    )
    trained = services.training.train(command).model
    assert services.reloader.registrar.adopt("iris_classifier", trained.record.id) is None
    assert services.store.slots()["iris_classifier"] is trained
