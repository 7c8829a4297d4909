"""The Prometheus metrics, defined once, and the telemetry sink that records them.

Import this module only through server/observability/metrics.py, which points prometheus-client at its
multiprocess directory first: prometheus-client picks where values live when it is imported, and with
--workers N every worker must write its own file there for the one endpoint to sum them.

Metric names and labels are part of predserve's interface (dashboards and alerts use them): change them
only with docs/observability.md. No label ever holds a token, a feature value or a path,
and `model_type` holds only model types the server knows, so a caller cannot create series at will.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from predserve.server.observability.telemetry import FinishedCall, ServedSlot, Telemetry, TrainEnd

# 100 µs (an empty call on this machine costs about 300 µs) to 30 s (a Train or a slow import).
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LOAD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TRAIN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUESTS = Counter(
    "predserve_requests_total",
    "RPCs answered, by service, method, model type (empty when the call names none) and gRPC status",
    ["service", "method", "model_type", "code"],
)
REQUEST_SECONDS = Histogram(
    "predserve_request_duration_seconds",
    "Time from the call reaching the handler to its answer",
    ["service", "method", "model_type"],
    buckets=REQUEST_BUCKETS,
)
PREDICT_ROWS = Counter("predserve_predict_rows_total", "Rows answered by Predict and ModelInfer", ["model_type"])
RUNTIME_ANSWERS = Counter(
    "predserve_runtime_answers_total",
    "Predict computations by the form that answered: a compiled runtime, or sklearn (the pipeline itself)",
    ["model_type", "runtime"],
)
RUNTIME_FALLBACKS = Counter(
    "predserve_runtime_fallbacks_total",
    "Calls a compiled form raised on, answered by the pipeline instead",
    ["model_type"],
)
BATCH_CALLS = Histogram(
    "predserve_batch_calls", "Concurrent Predict calls answered by one micro-batched computation", buckets=BATCH_BUCKETS
)
LOAD_SECONDS = Histogram(
    "predserve_model_load_duration_seconds",
    "Reading, verifying and preparing one prediction set: start-up, promote, reload and pinned loads",
    ["model_type"],
    buckets=LOAD_BUCKETS,
)
# With --workers N each process reports its own value; the endpoint shows the newest set any live worker
# serves, whether every live worker has a model loaded (min), and whether any falls back (max).
CURRENT_SET = Gauge(
    "predserve_current_prediction_set",
    "Id of the prediction set served (0: none)",
    ["model_type"],
    multiprocess_mode="livemax",
)
MODEL_LOADED = Gauge(
    "predserve_model_loaded", "1 while a model is served for the type", ["model_type"], multiprocess_mode="livemin"
)
MODEL_FALLBACK = Gauge(
    "predserve_model_fallback",
    "1 while an older set is served because the current one was refused",
    ["model_type"],
    multiprocess_mode="livemax",
)
TRAIN_SECONDS = Histogram(
    "predserve_train_duration_seconds",
    "Train calls, from admission to the set being recorded, by outcome: promoted, registered or failed",
    ["model_type", "outcome"],
    buckets=TRAIN_BUCKETS,
)
RELOADS = Counter("predserve_reloads_total", "Sets swapped in by the live reloader", ["model_type"])
# The object store (--artifact-store s3://...): fetches into the models directory, which is its cache.
FETCHES = Counter(
    "predserve_store_fetches_total", "Fetches from the artifact store, by outcome: ok or failed", ["outcome"]
)
FETCH_BYTES = Counter("predserve_store_fetch_bytes_total", "Bytes fetched from the artifact store and verified")
FETCH_SECONDS = Histogram(
    "predserve_store_fetch_duration_seconds", "One verified fetch from the artifact store", buckets=LOAD_BUCKETS
)
CACHE_LOOKUPS = Counter(
    "predserve_cache_lookups_total", "Files wanted from the cache of the artifact store: hit or miss", ["result"]
)


class PrometheusTelemetry(Telemetry):
    """`known` says whether a name is a model type of this server; any other name a caller sends is
    labelled "", so that no caller can make the server keep series for names of its choosing."""

    records = True

    def __init__(self, known: Callable[[str], bool]) -> None:
        self.known = known

    def _model_type(self, name: str) -> str:
        return name if name and self.known(name) else ""

    def call_finished(self, call: FinishedCall) -> None:
        model_type = self._model_type(call.model_type)
        REQUESTS.labels(call.service, call.method, model_type, call.code).inc()
        REQUEST_SECONDS.labels(call.service, call.method, model_type).observe(call.seconds)

    def rows_predicted(self, model_type: str, rows: int, runtime: str) -> None:
        PREDICT_ROWS.labels(model_type).inc(rows)
        RUNTIME_ANSWERS.labels(model_type, runtime).inc()

    def runtime_failed(self, model_type: str) -> None:
        RUNTIME_FALLBACKS.labels(model_type).inc()

    def batch_answered(self, calls: int) -> None:
        BATCH_CALLS.observe(calls)

    def model_loaded(self, model_type: str, seconds: float) -> None:
        LOAD_SECONDS.labels(model_type).observe(seconds)

    def slot_changed(self, slot: ServedSlot) -> None:
        CURRENT_SET.labels(slot.model_type).set(slot.prediction_set_id or 0)
        MODEL_LOADED.labels(slot.model_type).set(1 if slot.loaded else 0)
        MODEL_FALLBACK.labels(slot.model_type).set(1 if slot.fallback else 0)

    def train_finished(self, model_type: str, outcome: TrainEnd, seconds: float) -> None:
        TRAIN_SECONDS.labels(self._model_type(model_type), outcome.value).observe(seconds)

    def reloaded(self, model_type: str) -> None:
        RELOADS.labels(model_type).inc()

    def cache_looked_up(self, hit: bool) -> None:
        CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()

    def artifact_fetched(self, size_bytes: int, seconds: float) -> None:
        FETCHES.labels("ok").inc()
        FETCH_BYTES.inc(size_bytes)
        FETCH_SECONDS.observe(seconds)

    def artifact_fetch_failed(self) -> None:
        FETCHES.labels("failed").inc()
