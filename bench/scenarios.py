"""Measurements: in-process baselines, closed-loop runs against a server, start-up, Train, memory."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import loadgen
from bench.labs import Lab, serving, stop
from bench.procstats import memory_kib, process_tree
from harness.launcher import PROJECT_ROOT
from harness.ports import free_port
from harness.waiting import wait_until
from predserve.protos import grpc_predict_v2_pb2_grpc as pb_grpc


def inprocess_latencies(pipeline: Any, rows: Any, max_calls: int, max_seconds: float) -> np.ndarray:
    """pipeline.predict(rows) timed call by call in this process: the floor no server can go under."""
    pipeline.predict(rows)
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(latencies) < max_calls and time.perf_counter() < deadline:
        started = time.perf_counter()
        pipeline.predict(rows)
        latencies.append(time.perf_counter() - started)
    return np.asarray(latencies)


def inprocess_summary(latencies: np.ndarray, rows: int) -> dict[str, Any]:
    mean = float(latencies.mean())
    return {
        "calls": len(latencies),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3),
        "p90_ms": round(float(np.percentile(latencies, 90)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
        "requests_per_s": round(1.0 / mean, 1),
        "rows_per_s": round(rows / mean, 1),
    }


def check_labels(target: str, model: str, rows: Any, expected: np.ndarray) -> None:
    """One call before a run: the server's labels must be the in-process pipeline's, or the figures mean nothing."""
    with loadgen.channel(target) as ch:
        answer = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(loadgen.infer_request(model, rows), timeout=60)
    got = loadgen.output_values(answer).reshape(-1)  # MLServer answers [rows, 1], predserve [rows]
    if got.shape != expected.shape or not np.array_equal(got.astype(expected.dtype), expected):
        raise AssertionError(f"{target} answers {model} differently from the pipeline in process")


def load_run(
    target: str,
    model: str | None,
    rows: Any,
    concurrency: int,
    server_pid: int | None,
    max_seconds: float,
    max_requests: int = 50_000,
) -> dict[str, Any]:
    """A closed-loop run of ModelInfer (or of the empty call when model is None)."""
    if model is None or rows is None:
        result = loadgen.run_closed_loop(
            target, loadgen.empty_call, concurrency, max_requests, max_seconds, server_pid=server_pid
        )
    else:
        request = loadgen.infer_request(model, rows)
        result = loadgen.run_closed_loop(
            target,
            loadgen.infer_call(request),
            concurrency,
            max_requests,
            max_seconds,
            rows_per_request=len(rows),
            server_pid=server_pid,
            check=loadgen.answer_has_rows(len(rows)),
        )
    return result.summary()


def first_answer_seconds(
    start: Callable[[], subprocess.Popen[bytes]], target: str, model: str, rows: np.ndarray, timeout: float = 120.0
) -> tuple[float, subprocess.Popen[bytes]]:
    """From spawning a server process to its first answered ModelInfer; returns the running process too."""
    request = loadgen.infer_request(model, rows)
    started = time.monotonic()
    process = start()
    with loadgen.channel(target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)

        def answered() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"no answer from {target} (exited)")
            remaining = timeout - (time.monotonic() - started)
            try:
                stub.ModelInfer(request, timeout=min(max(remaining, 0.01), 5.0), wait_for_ready=True)
            except grpc.RpcError as exc:
                # A model not loaded yet (MLServer answers before its models are) counts as not yet answered.
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.INTERNAL,
                ):
                    raise
                return False
            return True

        wait_until(answered, timeout, f"an answer from {target}", interval=0.01)
        return time.monotonic() - started, process


_FLOOR_SCRIPT = """
import json, sys, time
imports_started = time.monotonic()
import predserve.server.app  # the modules predserve imports before it can serve: grpc, numpy, scikit-learn, joblib
import joblib
imported = time.monotonic()
loads = []
for path in sys.argv[1:]:
    t = time.monotonic(); joblib.load(path); loads.append(time.monotonic() - t)
print(json.dumps({"imports_started": imports_started, "imported": imported, "loads": loads}))
"""


def startup_floor(artifacts: Sequence[Path], python: str = sys.executable) -> dict[str, float]:
    """Interpreter start + predserve's imports + the sum of in-process joblib.load times, in a fresh process."""
    spawned = time.monotonic()
    output = subprocess.run(
        [python, "-c", _FLOOR_SCRIPT, *map(str, artifacts)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    timings = json.loads(output.strip().splitlines()[-1])
    interpreter = timings["imports_started"] - spawned
    imports = timings["imported"] - timings["imports_started"]
    loads = sum(timings["loads"])
    return {
        "interpreter_s": round(interpreter, 3),
        "imports_s": round(imports, 3),
        "joblib_loads_s": round(loads, 3),
        "floor_s": round(interpreter + imports + loads, 3),
    }


def predserve_startup(lab: Lab, model: str, rows: np.ndarray, extra_args: tuple[str, ...] = ()) -> float:
    port = free_port()
    process = lab.server(extra_args=extra_args, port=port)

    def start() -> subprocess.Popen[bytes]:
        process.start(wait=False)
        assert process.process is not None
        return process.process

    try:
        seconds, _ = first_answer_seconds(start, f"127.0.0.1:{port}", model, rows)
    finally:
        stop(process)
    return seconds


def train_overhead(lab: Lab, rounds: int) -> dict[str, Any]:
    """Train a 100-tree forest on 10,000 rows; the answer says how long the fit and the persistence took."""
    fits, persists = [], []
    with serving(lab.server()) as client:
        for index in range(rounds):
            answer = client.train("synthetic_forest", "synthetic", "random_forest", random_seed=index + 1)
            fits.append(answer.fit_seconds)
            persists.append(answer.persist_seconds)
    ratios = [p / f for p, f in zip(persists, fits, strict=True)]
    return {
        "fit_s": [round(f, 3) for f in fits],
        "persist_s": [round(p, 3) for p in persists],
        "median_fit_s": round(statistics.median(fits), 3),
        "median_persist_s": round(statistics.median(persists), 3),
        "median_ratio": round(statistics.median(ratios), 4),
    }


_SIZES_SCRIPT = """
import json, sys
import predserve.server.app, joblib
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss()
models = [joblib.load(path) for path in sys.argv[1:]]
print(json.dumps({"before_kib": before, "after_kib": rss()}))
"""


def memory(twenty: Lab, empty: Lab, artifacts: dict[str, Path], probes: dict[str, np.ndarray]) -> dict[str, Any]:
    """Resident memory of a server holding 20 models (each asked once) against the idle server plus the models'
    in-process size (the growth of a fresh process's RSS as it loads the same 20 files)."""
    output = subprocess.run(
        [sys.executable, "-c", _SIZES_SCRIPT, *map(str, artifacts.values())],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sizes = json.loads(output.strip().splitlines()[-1])
    models_kib = sizes["after_kib"] - sizes["before_kib"]

    def settled(lab: Lab, ask: dict[str, np.ndarray]) -> dict[str, int]:
        process = lab.server()
        process.start()
        try:
            with loadgen.channel(process.target) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                stub.ServerLive(loadgen.pb.ServerLiveRequest(), timeout=30)
                for model, rows in ask.items():
                    stub.ModelInfer(loadgen.infer_request(model, rows), timeout=30)
            assert process.process is not None
            pids = process_tree(process.process.pid)
            return {
                "rss_kib": sum(memory_kib(pid, "VmRSS") for pid in pids),
                "hwm_kib": sum(memory_kib(pid, "VmHWM") for pid in pids),
            }
        finally:
            stop(process)

    idle = settled(empty, {})
    loaded = settled(twenty, {model: probes[model] for model in artifacts})
    return {
        "idle_rss_mib": round(idle["rss_kib"] / 1024, 1),
        "models_in_process_mib": round(models_kib / 1024, 1),
        "loaded_rss_mib": round(loaded["rss_kib"] / 1024, 1),
        "loaded_peak_mib": round(loaded["hwm_kib"] / 1024, 1),
        "ratio_rss": round(loaded["rss_kib"] / (idle["rss_kib"] + models_kib), 3),
        "ratio_peak": round(loaded["hwm_kib"] / (idle["rss_kib"] + models_kib), 3),
    }


def pids_of(process: Any) -> int:
    return int(process.process.pid)
