"""A closed-loop load generator over the V2 (Open Inference Protocol) gRPC API.

Each of `concurrency` threads owns its own channel (and connection, so that `--workers` processes
sharing a port with SO_REUSEPORT all get traffic) and sends its next request as soon as the last
one is answered, until a request count or a time limit is reached. The same code drives predserve
and MLServer: both speak the `inference` protobuf package that predserve's own bindings define.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from bench.procstats import CpuMeter, CpuWindow
from predserve.protos import grpc_predict_v2_pb2 as pb
from predserve.protos import grpc_predict_v2_pb2_grpc as pb_grpc

CHANNEL_OPTIONS = [
    # One connection per channel: a shared subchannel would put every thread on one worker process.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Start-up timing polls a server that is not listening yet: retry the connection every 20 ms, or the
    # backoff (up to 100 ms here, 120 s by default) would be counted as start-up time.
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 20),
]
CALL_TIMEOUT = 30.0


def channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def infer_request(model_name: str, rows: Any, outputs: Sequence[str] = ("predict",)) -> pb.ModelInferRequest:
    """FP64 rows in raw_input_contents, as tritonclient sends them, or a DataFrame one input per column (see
    `table_request`); only the outputs named are asked for."""
    if hasattr(rows, "columns"):
        return table_request(model_name, rows, outputs)
    matrix = np.ascontiguousarray(rows, dtype="<f8")
    request = pb.ModelInferRequest(model_name=model_name)
    request.inputs.add(name="features", datatype="FP64", shape=list(matrix.shape))
    request.raw_input_contents.append(matrix.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def table_request(model_name: str, frame: Any, outputs: Sequence[str] = ("predict",)) -> pb.ModelInferRequest:
    """A DataFrame as MLServer's pandas codec takes it, and predserve too: the request's content_type "pd", one
    input per column, shape [rows, 1], FP64 for numbers (NaN: missing) and BYTES for strings (content_type
    "str"), all raw as tritonclient sends them (a BYTES element is its 4-byte little-endian length, then its
    UTF-8 bytes)."""
    request = pb.ModelInferRequest(model_name=model_name)
    request.parameters["content_type"].string_param = "pd"
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype == object:
            # content_type "str": MLServer's codec then gives the pipeline str, not bytes its encoders never saw.
            tensor = request.inputs.add(name=name, datatype="BYTES", shape=[len(values), 1])
            tensor.parameters["content_type"].string_param = "str"
            encoded = [str(value).encode() for value in values]
            request.raw_input_contents.append(b"".join(len(e).to_bytes(4, "little") + e for e in encoded))
        else:
            request.inputs.add(name=name, datatype="FP64", shape=[len(values), 1])
            request.raw_input_contents.append(np.ascontiguousarray(values, dtype="<f8").tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


_OUTPUT_DTYPES = {"INT64": "<i8", "INT32": "<i4", "FP64": "<f8", "FP32": "<f4"}


def output_values(response: pb.ModelInferResponse, name: str = "predict") -> np.ndarray:
    """One output tensor of an answer as numpy, raw or typed, whichever the server sent."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        dtype = _OUTPUT_DTYPES[tensor.datatype]
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
        else:
            field_name = {"INT64": "int64_contents", "INT32": "int_contents"}.get(tensor.datatype, "fp64_contents")
            values = np.asarray(getattr(tensor.contents, field_name), dtype=dtype)
        return values.reshape(list(tensor.shape))
    raise KeyError(f"no output {name!r} in the answer")


@dataclass
class LoadResult:
    """One closed-loop run: latencies in seconds of the measured calls, and who used the CPU meanwhile."""

    concurrency: int
    rows_per_request: int
    latencies: np.ndarray
    errors: int
    wall: float
    cpu: CpuWindow
    error_samples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.wall if self.wall > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.requests_per_second * self.rows_per_request

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.requests else float("nan")

    def server_cpu_per_call(self) -> float:
        """Server CPU seconds (/proc, all its processes) per call answered or failed during the window."""
        calls = self.requests + self.errors
        return self.cpu.server / calls if calls else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rows_per_request": self.rows_per_request,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.wall, 3),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "requests_per_s": round(self.requests_per_second, 1),
            "rows_per_s": round(self.rows_per_second, 1),
            "generator_cpu_pct": round(self.cpu.share(self.cpu.bench), 1),
            "server_cpu_pct": round(self.cpu.share(self.cpu.server), 1),
            "server_cpu_us_per_call": round(self.server_cpu_per_call() * 1e6, 1),
            "other_cpu_pct": round(self.cpu.share(self.cpu.others), 1),
            "error_samples": self.error_samples[:3],
        }


def run_closed_loop(
    target: str,
    call: Callable[[Any], Any],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    rows_per_request: int = 1,
    warmup_requests: int = 5,
    server_pid: int | None = None,
    check: Callable[[Any], bool] = lambda _: True,
) -> LoadResult:
    """Drives `call(stub)` from `concurrency` threads; stops at max_requests measured calls or max_seconds.

    Every thread first makes warmup_requests unmeasured calls (connection set-up, first-call costs);
    measurement starts once all threads are warm, together.
    """
    stubs = [(channel(target), None) for _ in range(concurrency)]
    stubs = [(ch, pb_grpc.GRPCInferenceServiceStub(ch)) for ch, _ in stubs]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    warm = threading.Barrier(concurrency + 1)
    stop = threading.Event()
    budget = [max_requests]

    def worker(stub: Any) -> None:
        for _ in range(warmup_requests):
            try:
                call(stub)
            except grpc.RpcError:
                pass
        warm.wait()
        mine: list[float] = []
        while not stop.is_set():
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            started = time.perf_counter()
            try:
                answer = call(stub)
                elapsed = time.perf_counter() - started
                if check(answer):
                    mine.append(elapsed)
                else:
                    with lock:
                        errors.append("wrong answer")
            except grpc.RpcError as exc:
                with lock:
                    errors.append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(stub,), daemon=True) for _, stub in stubs]
    for thread in threads:
        thread.start()
    warm.wait()
    meter = CpuMeter(server_pid)
    deadline = time.perf_counter() + max_seconds
    while any(t.is_alive() for t in threads) and time.perf_counter() < deadline:
        threads[0].join(timeout=0.05)
    stop.set()
    for thread in threads:
        thread.join()
    cpu = meter.stop()
    for ch, _ in stubs:
        ch.close()
    return LoadResult(
        concurrency=concurrency,
        rows_per_request=rows_per_request,
        latencies=np.asarray(latencies),
        errors=len(errors),
        wall=cpu.wall,
        cpu=cpu,
        error_samples=errors[:3],
    )


def infer_call(request: pb.ModelInferRequest) -> Callable[[Any], pb.ModelInferResponse]:
    def call(stub: Any) -> pb.ModelInferResponse:
        return stub.ModelInfer(request, timeout=CALL_TIMEOUT)

    return call


def empty_call(stub: Any) -> pb.ServerLiveResponse:
    """ServerLive: an RPC with an empty request whose handler does nothing, served by the same stack."""
    return stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_TIMEOUT)


def answer_has_rows(rows: int) -> Callable[[pb.ModelInferResponse], bool]:
    """A cheap check of every answer: one predict output with one value per row."""

    def check(response: pb.ModelInferResponse) -> bool:
        return len(response.outputs) >= 1 and list(response.outputs[0].shape)[:1] == [rows]

    return check
