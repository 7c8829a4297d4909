"""Metrics, JSON logs and the access log of a real server: exact counts summed over two workers, labels
that never carry a secret, a worker's death, and bad metrics configuration refused in one line."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.procstats import process_tree
from harness.metrics import metrics_url, samples, scrape, server_with_metrics
from harness.waiting import wait_until
from predserve.protos import grpc_predict_v2_pb2 as v2
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

ADMIN = "admin-" + secrets.token_urlsafe(24)
PREDICT = "predict-" + secrets.token_urlsafe(24)
PREDSERVE = "predserve.v1.Predserve"
V2 = "inference.GRPCInferenceService"
PREDICTS, UNKNOWN, INFERS = 12, 3, 4


def value(port: int, name: str, **labels: str) -> float:
    """The sample's value, 0 when the series does not exist (yet)."""
    return samples(scrape(metrics_url(port))).get((name, frozenset(labels.items())), 0.0)


def fresh_channel(target: str) -> grpc.Channel:
    # A connection of its own: SO_REUSEPORT spreads connections, not calls, over the two workers.
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int, Path]]:
    workdir = tmp_path_factory.mktemp("observed")
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"a previous run's leftovers")
    extra_args = ["--metrics-dir", str(metrics_dir), "--log-format", "json", "--access-log", "--reload-interval", "0.2"]
    env = {"PREDSERVE_ADMIN_TOKEN": ADMIN, "PREDSERVE_PREDICT_TOKEN": PREDICT}
    with server_with_metrics(ServerProcess, workdir, extra_args, env) as (server, port):
        with server.client(token=ADMIN) as client:
            names, rows = iris_rows()
            client.ingest("iris", rows, names)
            client.train("iris", "iris", "logistic_regression")
        # The worker that did not train has reloaded the set: every worker now answers for iris.
        wait_until(lambda: value(port, "predserve_reloads_total", model_type="iris") >= 1, 30, "the other worker")
        call_both_services(server.target)
        yield server, port, metrics_dir


def call_both_services(target: str) -> None:
    metadata = (("authorization", f"Bearer {PREDICT}"),)
    for index in range(PREDICTS):
        with fresh_channel(target) as channel:
            request = pb.PredictRequest(model_type="iris", rows=[pb.Row(features=IRIS_PROBES[index % 4])])
            pb_grpc.PredserveStub(channel).Predict(request, metadata=metadata, timeout=10)
    for _ in range(UNKNOWN):
        with fresh_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
            request = pb.PredictRequest(model_type="no_such_model", rows=[pb.Row(features=IRIS_PROBES[0])])
            pb_grpc.PredserveStub(channel).Predict(request, metadata=metadata, timeout=10)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    matrix = np.asarray(IRIS_PROBES[:2], dtype="<f8")
    for _ in range(INFERS):
        with fresh_channel(target) as channel:
            request = v2.ModelInferRequest(model_name="iris")
            request.inputs.add(name="features", datatype="FP64", shape=list(matrix.shape))
            request.raw_input_contents.append(matrix.tobytes())
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata, timeout=10)


@pytest.mark.slow
def test_every_call_is_counted_once_over_both_workers(observed: tuple[ServerProcess, int, Path]) -> None:
    _, port, _ = observed
    found = samples(scrape(metrics_url(port)))

    def count(service: str, method: str, model_type: str, code: str) -> float:
        labels = {"service": service, "method": method, "model_type": model_type, "code": code}
        return found.get(("predserve_requests_total", frozenset(labels.items())), 0.0)

    assert count(PREDSERVE, "Predict", "iris", "OK") == PREDICTS
    # An unknown name is labelled "", so that no caller can make the server keep series of its choosing.
    assert count(PREDSERVE, "Predict", "", "NOT_FOUND") == UNKNOWN
    assert count(V2, "ModelInfer", "iris", "OK") == INFERS
    assert count(PREDSERVE, "Train", "iris", "OK") == 1
    histogram = {"service": PREDSERVE, "method": "Predict", "model_type": "iris"}
    assert found[("predserve_request_duration_seconds_count", frozenset(histogram.items()))] == PREDICTS
    assert found[("predserve_predict_rows_total", frozenset({("model_type", "iris")}))] == PREDICTS + 2 * INFERS
    assert found[("predserve_current_prediction_set", frozenset({("model_type", "iris")}))] == 1
    assert found[("predserve_model_loaded", frozenset({("model_type", "iris")}))] == 1
    assert found[("predserve_model_fallback", frozenset({("model_type", "iris")}))] == 0
    promoted = frozenset({("model_type", "iris"), ("outcome", "promoted")})
    assert found[("predserve_train_duration_seconds_count", promoted)] == 1
    # Loaded once, by the reload in the other worker: a Train serves the pipeline it has just fitted.
    assert found[("predserve_model_load_duration_seconds_count", frozenset({("model_type", "iris")}))] == 1
    assert found[("process_open_fds", frozenset())] > 0


@pytest.mark.slow
def test_no_label_holds_a_token_a_path_or_a_feature_value(observed: tuple[ServerProcess, int, Path]) -> None:
    server, port, metrics_dir = observed
    text = scrape(metrics_url(port))
    for secret in (ADMIN, PREDICT, str(server.models_dir), str(server.workdir), str(metrics_dir)):
        assert secret not in text
    label_values = {
        value
        for _, labels in samples(text)
        for name, value in labels
        if name != "le"  # a histogram's bucket bounds are numbers of the server's, not of a caller's
    }
    assert not {str(x) for probe in IRIS_PROBES for x in probe} & label_values
    assert "no_such_model" not in label_values


@pytest.mark.slow
def test_json_logs_and_the_access_log_carry_their_fields(observed: tuple[ServerProcess, int, Path]) -> None:
    server, _, _ = observed
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message", "pid"} <= line.keys() for line in lines)
    assert all(line["time"].endswith("+00:00") for line in lines)
    events = {line.get("event") for line in lines}
    assert {"database_ready", "ready", "reload"} <= events
    reload = next(line for line in lines if line.get("event") == "reload")
    assert reload["model_type"] == "iris" and reload["prediction_set_id"] == 1
    access = [line for line in lines if line["logger"] == "predserve.access"]
    predicts = [line for line in access if line["method"] == "Predict" and line["code"] == "OK"]
    assert len(predicts) == PREDICTS
    assert all(line["model_type"] == "iris" and line["peer"].startswith("ipv4:127.0.0.1:") for line in predicts)
    assert all(line["duration_ms"] > 0 for line in predicts)
    # Fresh connections reached both workers, and each counted into the one endpoint.
    assert len({line["pid"] for line in predicts}) == 2
    assert sum(line["code"] == "NOT_FOUND" for line in access) == UNKNOWN


@pytest.mark.slow
def test_a_metrics_file_still_being_created_does_not_fail_the_scrape(observed: tuple[ServerProcess, int, Path]) -> None:
    """A starting worker creates its file empty, then sizes it: a scrape in between once answered 500."""
    _, port, metrics_dir = observed
    before = value(port, "predserve_requests_total", service=PREDSERVE, method="Predict", model_type="iris", code="OK")
    being_created = metrics_dir / f"counter_{os.getpid()}.db"
    being_created.write_bytes(b"")
    try:
        after = value(
            port, "predserve_requests_total", service=PREDSERVE, method="Predict", model_type="iris", code="OK"
        )
    finally:
        being_created.unlink()
    assert after == before == PREDICTS


@pytest.mark.slow
def test_a_dead_worker_is_marked_dead_and_its_counts_stay(observed: tuple[ServerProcess, int, Path]) -> None:
    """Runs last in this module: it kills a worker. The endpoint was wiped of the stale file at start."""
    server, port, metrics_dir = observed
    assert not (metrics_dir / "counter_999999.db").exists()
    assert server.process is not None
    before = value(port, "predserve_requests_total", service=PREDSERVE, method="Predict", model_type="iris", code="OK")
    victim = next(pid for pid in process_tree(server.process.pid) if pid != server.process.pid)
    assert list(metrics_dir.glob(f"gauge_live*_{victim}.db"))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not list(metrics_dir.glob(f"gauge_live*_{victim}.db")), 30, "the dead worker's gauges to go")
    after = value(port, "predserve_requests_total", service=PREDSERVE, method="Predict", model_type="iris", code="OK")
    assert after == before == PREDICTS  # counters of a dead worker still count: calls it answered happened
    wait_until(lambda: len(process_tree(server.process.pid)) == 3, 30, "the replacement worker")
    wait_until(
        lambda: value(port, "predserve_current_prediction_set", model_type="iris") == 1, 30, "the gauge after it"
    )


def test_start_up_and_shutdown_lines_carry_their_fields(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    with server.client() as client:
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train("iris", "iris", "logistic_regression")
    server.stop()
    server.log_path.unlink()
    server = ServerProcess(tmp_path, extra_args=["--log-format", "json"]).start()
    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    by_event = {line["event"]: line for line in lines if "event" in line}
    loaded = by_event["loaded"]
    assert loaded["model_type"] == "iris" and loaded["prediction_set_id"] == 1 and loaded["runtime"]
    assert loaded["path"].endswith(".joblib") and loaded["duration_ms"] > 0
    assert by_event["ready"]["port"] == server.port and by_event["ready"]["duration_ms"] > 0
    assert {"database_ready", "shutdown", "stopped"} <= by_event.keys()
    assert len({line["pid"] for line in lines}) == 1


def test_a_taken_metrics_port_stops_the_start_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = ServerProcess(tmp_path, extra_args=["--metrics-port", str(taken)])
        server.start(wait=False)
        assert server.wait_exit(60) == 1
    log = server.log()
    assert f"cannot serve metrics on 127.0.0.1:{taken}" in log
    assert "Traceback" not in log
    assert not (tmp_path / "server.port").exists()


def test_log_level_warning_keeps_info_lines_out(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=["--log-level", "warning"]).start()
    assert server.stop() == 0
    log = server.log()
    assert " INFO " not in log and "predserve ready" not in log
    # A start beside an empty registry warns nothing, so only WARNING lines or none at all may be there.
    assert all(" WARNING " in line or " ERROR " in line for line in log.splitlines() if line.strip())
