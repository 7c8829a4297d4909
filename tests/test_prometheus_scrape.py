"""A real Prometheus server scrapes predserve with two workers, and PromQL returns the calls the test made.

Prometheus is Debian's `prometheus` package (.ci/run installs it), run here as a process of the test's own: its
own configuration, its own TSDB in a temporary directory, on a free loopback port. Without the binary the test is
skipped, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from harness.metrics import metrics_url, samples, scrape, server_with_metrics
from harness.ports import free_port
from harness.waiting import wait_until
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

pytestmark = pytest.mark.slow  # a server with two workers, a Prometheus, and scrapes a second apart

MODEL_TYPE = "iris"
JOB = "predserve"
PREDICTS, UNKNOWN = 14, 3
SCRAPE_INTERVAL = "1s"
QUERY_WAIT = 60.0  # a few scrape intervals are enough; bounded all the same
START_ATTEMPTS = 3  # a free port found by binding to 0 can be taken before Prometheus binds it


def find_prometheus() -> str:
    """$PREDSERVE_PROMETHEUS_BIN or `prometheus` on PATH; without it, skip (fail under CI=true)."""
    binary = os.environ.get("PREDSERVE_PROMETHEUS_BIN") or shutil.which("prometheus")
    if binary:
        return binary
    message = (
        "Prometheus is not installed (no `prometheus` on PATH: apt-get install prometheus, or set "
        "PREDSERVE_PROMETHEUS_BIN), so the real-scrape test cannot run"
    )
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI must run every test: {message}")
    pytest.skip(message)


class Prometheus:
    """`prometheus` scraping one target every second, on 127.0.0.1, with its data under `root`."""

    def __init__(self, binary: str, root: Path, metrics_port: int) -> None:
        self.binary = binary
        self.root = root
        self.config = root / "prometheus.yml"
        self.log_path = root / "prometheus.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            f"  - job_name: {JOB}\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n"
        )

    def start(self) -> Prometheus:
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={self.root / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                    ],
                    cwd=self.root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                wait_until(self._ready, 60, f"Prometheus to answer /-/ready on 127.0.0.1:{self.port}")
                return self
            except _Exited:
                if "address already in use" not in self.log():
                    break
        raise RuntimeError(f"Prometheus did not start:\n{self.log()}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise _Exited
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def query(self, promql: str) -> list[dict[str, object]]:
        """The instant vector of a PromQL query through the HTTP API."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        assert answer["data"]["resultType"] == "vector", answer
        return list(answer["data"]["result"])

    def scalar(self, promql: str) -> float | None:
        """The value of a query that yields one series (a sum), None while it yields none."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        value = result[0]["value"]
        assert isinstance(value, list)
        return float(value[1])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class _Exited(Exception):
    pass


@pytest.fixture
def prometheus_binary() -> str:
    return find_prometheus()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    """predserve with two workers and metrics on a free port, iris trained and loaded by every worker."""
    workdir = tmp_path / "predserve"
    workdir.mkdir()
    extra_args = ["--log-format", "json", "--access-log", "--reload-interval", "0.2"]
    with server_with_metrics(ServerProcess, workdir, extra_args) as (server, metrics_port):
        with server.client() as client:
            names, rows = iris_rows()
            client.ingest(MODEL_TYPE, rows, names)
            client.train(MODEL_TYPE, MODEL_TYPE, "logistic_regression")

        # predserve_model_loaded is a livemin: 1 once every worker that has the series serves the type. A worker
        # gets the series only when it loads, so also wait for the reload of the worker that did not train.
        def every_worker_serves() -> bool:
            found = samples(scrape(metrics_url(metrics_port)))
            labels = frozenset({("model_type", MODEL_TYPE)})
            return found.get(("predserve_reloads_total", labels), 0) >= 1 and (
                found.get(("predserve_model_loaded", labels)) == 1
            )

        wait_until(every_worker_serves, 30, f"every worker to serve {MODEL_TYPE}")
        yield server, metrics_port


def fresh_channel(target: str) -> grpc.Channel:
    # A connection of its own: SO_REUSEPORT spreads connections, not calls, over the two workers.
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def make_calls(target: str) -> None:
    for index in range(PREDICTS):
        with fresh_channel(target) as channel:
            request = pb.PredictRequest(model_type=MODEL_TYPE, rows=[pb.Row(features=IRIS_PROBES[index % 4])])
            pb_grpc.PredserveStub(channel).Predict(request, timeout=10)
    for _ in range(UNKNOWN):
        with fresh_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
            request = pb.PredictRequest(model_type="no_such_model", rows=[pb.Row(features=IRIS_PROBES[0])])
            pb_grpc.PredserveStub(channel).Predict(request, timeout=10)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND


def test_prometheus_scrapes_both_workers_and_promql_counts_every_call(
    prometheus_binary: str, served: tuple[ServerProcess, int], tmp_path: Path
) -> None:
    server, metrics_port = served
    root = tmp_path / "prometheus"
    root.mkdir()
    prometheus = Prometheus(prometheus_binary, root, metrics_port)
    try:
        prometheus.start()
        wait_until(lambda: prometheus.scalar(f'up{{job="{JOB}"}}') == 1, QUERY_WAIT, "Prometheus to scrape predserve")
        make_calls(server.target)

        ok = f'sum(predserve_requests_total{{job="{JOB}",method="Predict",code="OK",model_type="{MODEL_TYPE}"}})'
        # An unknown model type is labelled "": no caller can make the server keep series of its choosing.
        not_found = f'sum(predserve_requests_total{{job="{JOB}",method="Predict",code="NOT_FOUND",model_type=""}})'
        seen: dict[str, float | None] = {}

        def counted() -> bool:
            seen["ok"], seen["not_found"] = prometheus.scalar(ok), prometheus.scalar(not_found)
            return seen["ok"] == PREDICTS and seen["not_found"] == UNKNOWN

        try:
            wait_until(counted, QUERY_WAIT, f"PromQL to count {PREDICTS} OK and {UNKNOWN} NOT_FOUND", interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: last answers {seen}; Prometheus log:\n{prometheus.log()}") from None
        assert prometheus.scalar(f'up{{job="{JOB}"}}') == 1
        assert prometheus.scalar(f'predserve_model_loaded{{job="{JOB}",model_type="{MODEL_TYPE}"}}') == 1
        assert prometheus.scalar(f'predserve_current_prediction_set{{job="{JOB}",model_type="{MODEL_TYPE}"}}') == 1
        # Prometheus holds what the endpoint says, and the endpoint sums over both workers:
        direct = samples(scrape(metrics_url(metrics_port)))
        labels = {"service": "predserve.v1.Predserve", "method": "Predict", "model_type": MODEL_TYPE, "code": "OK"}
        assert direct[("predserve_requests_total", frozenset(labels.items()))] == PREDICTS
    finally:
        prometheus.stop()

    # Both workers answered Predicts (the access log names each call's process), so the count is a sum.
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    predicts = [
        line
        for line in lines
        if line.get("logger") == "predserve.access" and line.get("method") == "Predict" and line.get("code") == "OK"
    ]
    assert len(predicts) == PREDICTS
    assert len({line["pid"] for line in predicts}) == 2
