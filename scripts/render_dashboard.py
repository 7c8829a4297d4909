"""Draws docs/observability-dashboard.png from a real run, and refreshes the scrape excerpt of docs/observability.md.

`make dashboard` runs it: a real predserve with --workers 2 and --metrics-port on 127.0.0.1 in a temporary
directory, two model types trained, a bounded load of Predict, V2 ModelInfer and refused calls with Trains and
a promotion along the way, /metrics scraped every second. The PNG draws the panels of
deploy/grafana/predserve-dashboard.json from that scrape series, computed as PromQL would (rates from counter
differences, quantiles from bucket differences as histogram_quantile does), and docs/observability-scrape.txt
is an excerpt of the last scrape, copied verbatim into docs/observability.md between its scrape markers.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from harness import metrics  # noqa: E402
from harness.launcher import ServerProcess  # noqa: E402
from harness.metrics import SeriesKey  # noqa: E402
from harness.waiting import wait_until  # noqa: E402
from predserve.client.library import PredserveClient  # noqa: E402
from predserve.protos import grpc_predict_v2_pb2 as v2  # noqa: E402
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc  # noqa: E402
from predserve.protos import predserve_pb2 as pb  # noqa: E402
from predserve.protos import predserve_pb2_grpc as pb_grpc  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger("render_dashboard")

PNG = ROOT / "docs" / "observability-dashboard.png"
SCRAPE_EXCERPT = ROOT / "docs" / "observability-scrape.txt"
README = ROOT / "docs" / "observability.md"
SCRAPE_BEGIN = "<!-- scrape:begin -->"
SCRAPE_END = "<!-- scrape:end -->"

IRIS = "iris_classifier"
FOREST = "cancer_forest"
UNKNOWN = "no_such_model"
PREDSERVE_SERVICE = "predserve.v1.Predserve"
V2_SERVICE = "inference.GRPCInferenceService"
RATE_WINDOW = 5  # scrapes (seconds) per rate, as a Grafana $__rate_interval would be at a 1 s scrape interval
QUANTILE_WINDOW = 10
CALL_TIMEOUT = 10.0
# The bucket lines of one series kept in the excerpt: enough to show the form, not the whole ladder.
EXCERPT_BUCKET_SERIES = ('method="Predict"', f'model_type="{IRIS}"')
EXCERPT_BUCKETS = ('le="0.0001"', 'le="0.00025"', 'le="0.0005"', 'le="0.001"', 'le="+Inf"')

# What a call should add to predserve_requests_total: service, method, model_type label, code.
CallKey = tuple[str, str, str, str]


# -- the run -------------------------------------------------------------------------------------------------


def builtin_dataset(name: str) -> tuple[list[str], list[tuple[list[float], int]]]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    rows = [(list(map(float, x)), int(y)) for x, y in zip(bunch.data, bunch.target, strict=True)]
    return [str(n).replace(" ", "_") for n in bunch.feature_names], rows


def train_models(client: PredserveClient) -> dict[str, list[list[float]]]:
    """Ingests iris and breast_cancer, trains one model type on each; returns each type's feature rows."""
    features = {}
    for model_type, dataset, algorithm, params in (
        (IRIS, "iris", "logistic_regression", {}),
        (FOREST, "breast_cancer", "random_forest", {"n_estimators": 50}),
    ):
        names, rows = builtin_dataset(dataset)
        client.ingest(dataset, rows, names)
        client.train(model_type, dataset, algorithm, params=params)
        features[model_type] = [row for row, _ in rows]
    return features


def infer_request(model: str, rows: Sequence[Sequence[float]]) -> v2.ModelInferRequest:
    matrix = np.asarray(rows, dtype="<f8")
    tensor = v2.ModelInferRequest.InferInputTensor(name="features", datatype="FP64", shape=list(matrix.shape))
    return v2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[matrix.tobytes()])


class Load:
    """Client threads, each on a connection of its own (SO_REUSEPORT spreads connections over the workers),
    whose pace swells and ebbs over the run so that the rate panels have a shape."""

    def __init__(self, target: str, features: Mapping[str, list[list[float]]], seconds: float) -> None:
        self.target = target
        self.features = features
        self.seconds = seconds
        self.stop = threading.Event()
        self.started = 0.0
        self.unexpected: list[str] = []
        self.threads: list[threading.Thread] = []
        self.answered: Counter[CallKey] = Counter()
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started = time.monotonic()
        workers: list[tuple[str, Callable[[grpc.Channel, random.Random], CallKey], float, float]] = [
            ("iris-predict-1", self._predict_iris, 120.0, 0.0),
            ("iris-predict-2", self._predict_iris, 80.0, 1.5),
            ("forest-predict", self._predict_forest, 60.0, 3.0),
            ("v2-infer", self._infer, 60.0, 4.5),
            ("refused", self._refused, 6.0, 0.0),
        ]
        for index, (name, call, per_second, phase) in enumerate(workers):
            thread = threading.Thread(target=self._run, args=(call, per_second, phase, index), name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=CALL_TIMEOUT + 5)

    def _run(
        self, call: Callable[[grpc.Channel, random.Random], CallKey], per_second: float, phase: float, seed: int
    ) -> None:
        generator = random.Random(seed)
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(self.target, options=options) as channel:
            while not self.stop.is_set():
                elapsed = time.monotonic() - self.started
                if elapsed >= self.seconds:
                    return
                try:
                    key = call(channel, generator)
                    with self._lock:
                        self.answered[key] += 1
                except grpc.RpcError as error:
                    name = threading.current_thread().name
                    self.unexpected.append(f"{elapsed:.1f} s {name}: {error.code().name} {error.details()}")
                swell = 0.65 + 0.35 * math.sin(2 * math.pi * (elapsed + phase) / 20.0)
                self.stop.wait(1.0 / (per_second * swell))

    def _rows(self, model_type: str, generator: random.Random, most: int) -> list[list[float]]:
        pool = self.features[model_type]
        return [pool[generator.randrange(len(pool))] for _ in range(generator.randint(1, most))]

    def _predict_iris(self, channel: grpc.Channel, generator: random.Random) -> CallKey:
        rows = self._rows(IRIS, generator, 4)
        request = pb.PredictRequest(model_type=IRIS, rows=[pb.Row(features=row) for row in rows])
        pb_grpc.PredserveStub(channel).Predict(request, timeout=CALL_TIMEOUT)
        return PREDSERVE_SERVICE, "Predict", IRIS, "OK"

    def _predict_forest(self, channel: grpc.Channel, generator: random.Random) -> CallKey:
        # Now and then a call of 400 rows, past what the compiled trees take: the pipeline answers it.
        rows = self._rows(FOREST, generator, 8) if generator.random() > 0.05 else self._rows(FOREST, generator, 1) * 400
        request = pb.PredictRequest(
            model_type=FOREST, rows=[pb.Row(features=row) for row in rows], include_probabilities=True
        )
        pb_grpc.PredserveStub(channel).Predict(request, timeout=CALL_TIMEOUT)
        return PREDSERVE_SERVICE, "Predict", FOREST, "OK"

    def _infer(self, channel: grpc.Channel, generator: random.Random) -> CallKey:
        model = IRIS if generator.random() < 0.5 else FOREST
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request(model, self._rows(model, generator, 4)), timeout=CALL_TIMEOUT
        )
        return V2_SERVICE, "ModelInfer", model, "OK"

    def _refused(self, channel: grpc.Channel, generator: random.Random) -> CallKey:
        """An unknown model type (NOT_FOUND) or a row of the wrong width (INVALID_ARGUMENT)."""
        unknown = generator.random() < 0.7
        request = pb.PredictRequest(
            model_type=UNKNOWN if unknown else IRIS, rows=[pb.Row(features=[1.0, 2.0] if not unknown else [1.0])]
        )
        try:
            pb_grpc.PredserveStub(channel).Predict(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            expected = grpc.StatusCode.NOT_FOUND if unknown else grpc.StatusCode.INVALID_ARGUMENT
            if error.code() is not expected:
                raise
            # An unknown model type is labelled "": no caller makes the server keep series of its choosing.
            return PREDSERVE_SERVICE, "Predict", "" if unknown else IRIS, expected.name
        raise AssertionError(
            f"a Predict of {request.model_type} with {len(request.rows[0].features)} features was answered"
        )


@dataclass(frozen=True)
class Event:
    at: float  # seconds into the load
    label: str


def admin_story(client: PredserveClient, load: Load, events: list[Event]) -> None:
    """Trains along the way: a new iris set promoted (the other worker reloads it), a forest set registered
    and promoted later (a promote load and a reload), and a Train that fails on a bad parameter."""

    def at(fraction: float) -> bool:
        deadline = load.started + load.seconds * fraction
        return not load.stop.wait(max(0.0, deadline - time.monotonic()))

    def mark(label: str) -> None:
        events.append(Event(time.monotonic() - load.started, label))

    if not at(0.35):
        return
    client.train(IRIS, "iris", "logistic_regression", params={"C": 0.3})
    mark(f"Train {IRIS} (promoted)")
    if not at(0.5):
        return
    registered = client.train(
        FOREST, "breast_cancer", "random_forest", params={"n_estimators": 80}, promotion="register-only"
    )
    mark(f"Train {FOREST} (registered)")
    if not at(0.6):
        return
    try:
        client.train(IRIS, "iris", "logistic_regression", params={"C": -1})
    except Exception as error:  # the refusal is the point: the Train ends with outcome "failed"
        logger.info("the bad Train was refused as meant: %s", error)
    mark(f"Train {IRIS} (failed)")
    if not at(0.7):
        return
    client.promote(registered.prediction_set_id)
    mark(f"Promote {FOREST}")


@dataclass
class Scrape:
    at: float  # seconds into the load
    text: str
    samples: dict[SeriesKey, float]


def scrape(port: int, instance: str) -> tuple[str, dict[SeriesKey, float]]:
    """One scrape; every sample gets the `instance` label a Prometheus would add."""
    text = metrics.scrape(metrics.metrics_url(port))
    return text, {
        (name, frozenset({**dict(labels), "instance": instance}.items())): value
        for (name, labels), value in metrics.samples(text).items()
    }


def wait_for_every_worker(port: int, instance: str) -> None:
    """Until the worker that did not answer the Trains has reloaded both model types: until then it knows
    neither, and answers NOT_FOUND for calls that a connection of its own sends it."""

    def reloaded() -> bool:
        _, samples = scrape(port, instance)
        return all(
            samples.get(("predserve_reloads_total", frozenset({"model_type": name, "instance": instance}.items())), 0)
            >= 1
            for name in (IRIS, FOREST)
        )

    wait_until(reloaded, 30, "the other worker to reload both model types", interval=0.2)


def run(seconds: float) -> tuple[list[Scrape], list[Event], str]:
    with tempfile.TemporaryDirectory(prefix="predserve-dashboard-") as workdir:
        server, metrics_port = metrics.start_server_with_metrics(
            ServerProcess, Path(workdir), extra_args=["--reload-interval", "1"]
        )
        instance = f"127.0.0.1:{metrics_port}"
        scrapes: list[Scrape] = []
        events: list[Event] = []
        try:
            with PredserveClient(server.target) as client:
                features = train_models(client)
                wait_for_every_worker(metrics_port, instance)
                load = Load(server.target, features, seconds)
                admin = threading.Thread(target=admin_story, args=(client, load, events), name="admin", daemon=True)
                load.start()
                admin.start()
                tick = load.started
                # Scrapes past the load's end, so that the rates fall back to zero in the plot; the last one
                # comes after every call has been answered, so that it holds them all.
                while tick - load.started <= seconds + 3:
                    if tick - load.started > seconds + 2:
                        load.join()
                        admin.join(timeout=60)
                    text, samples = scrape(metrics_port, instance)
                    scrapes.append(Scrape(time.monotonic() - load.started, text, samples))
                    tick += 1.0
                    time.sleep(max(0.0, tick - time.monotonic()))
            if load.unexpected:
                raise RuntimeError("unexpected answers under load:\n" + "\n".join(load.unexpected))
            check_counts(load.answered, scrapes[-1], instance)
        finally:
            try:
                server.stop(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        return scrapes, events, instance


def check_counts(answered: Mapping[CallKey, int], last: Scrape, instance: str) -> None:
    """Every call the load made is in predserve_requests_total, exactly, summed over both workers."""
    wrong = []
    for (service, method, model_type, code), calls in sorted(answered.items()):
        labels = {"service": service, "method": method, "model_type": model_type, "code": code, "instance": instance}
        counted = last.samples.get(("predserve_requests_total", frozenset(labels.items())), 0.0)
        if counted != calls:
            wrong.append(f"{service} {method} {model_type!r} {code}: {calls} calls, counted {counted:g}")
    if wrong:
        raise RuntimeError("predserve_requests_total does not count the calls made:\n" + "\n".join(wrong))
    logger.info("predserve_requests_total counts each of the %d calls of the load exactly", sum(answered.values()))


# -- PromQL over the scrape series ------------------------------------------------------------------------------


def _labels(key: SeriesKey) -> dict[str, str]:
    return dict(key[1])


def _matches(labels: Mapping[str, str], match: Mapping[str, Callable[[str], bool]]) -> bool:
    return all(test(labels.get(name, "")) for name, test in match.items())


def _group(labels: Mapping[str, str], by: Sequence[str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in by)


def increases(
    scrapes: Sequence[Scrape], index: int, window: int, name: str, match: Mapping[str, Callable[[str], bool]]
) -> dict[SeriesKey, float]:
    """Each matching counter series' increase over `window` scrapes ending at `index`; a series not yet
    created counts as 0, which it was (counters are created at their first increment)."""
    now, before = scrapes[index].samples, scrapes[index - window].samples
    return {
        key: value - before.get(key, 0.0)
        for key, value in now.items()
        if key[0] == name and _matches(_labels(key), match)
    }


def rate_series(
    scrapes: Sequence[Scrape],
    name: str,
    by: Sequence[str],
    match: Mapping[str, Callable[[str], bool]] | None = None,
    window: int = RATE_WINDOW,
) -> tuple[list[float], dict[tuple[str, ...], list[float]]]:
    """sum by (by) (rate(name{match}[window])) at each scrape: the times and one value list per group."""
    times = [scrapes[i].at for i in range(window, len(scrapes))]
    series: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0] * len(times))
    for position, index in enumerate(range(window, len(scrapes))):
        span = scrapes[index].at - scrapes[index - window].at
        for key, delta in increases(scrapes, index, window, name, match or {}).items():
            series[_group(_labels(key), by)][position] += delta / span
    return times, dict(series)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over cumulative (upper bound, count) pairs, +Inf last."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound  # the highest finite bound, as Prometheus answers for the +Inf bucket
            if upper_bound == buckets[0][0] and upper_bound <= 0:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper_bound, count
    return math.nan


def quantile_series(
    scrapes: Sequence[Scrape],
    q: float,
    name: str,
    by: Sequence[str],
    match: Mapping[str, Callable[[str], bool]] | None = None,
    window: int = QUANTILE_WINDOW,
) -> tuple[list[float], dict[tuple[str, ...], list[float]]]:
    """histogram_quantile(q, sum by (le, by) (rate(name_bucket{match}[window]))) at each scrape."""
    times = [scrapes[i].at for i in range(window, len(scrapes))]
    series: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [math.nan] * len(times))
    for position, index in enumerate(range(window, len(scrapes))):
        grouped: dict[tuple[str, ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for key, delta in increases(scrapes, index, window, f"{name}_bucket", match or {}).items():
            labels = _labels(key)
            grouped[_group(labels, by)][float(labels["le"])] += delta
        for group, buckets in grouped.items():
            series[group][position] = histogram_quantile(q, list(buckets.items()))
    return times, dict(series)


def gauge_series(
    scrapes: Sequence[Scrape],
    name: str,
    by: Sequence[str],
    aggregate: Callable[[Iterable[float]], float] = max,
) -> tuple[list[float], dict[tuple[str, ...], list[float]]]:
    """aggregate by (by) (name) at each scrape; NaN where the group has no series yet."""
    times = [s.at for s in scrapes]
    series: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [math.nan] * len(times))
    for position, one in enumerate(scrapes):
        grouped: dict[tuple[str, ...], list[float]] = defaultdict(list)
        for key, value in one.samples.items():
            if key[0] == name:
                grouped[_group(_labels(key), by)].append(value)
        for group, values in grouped.items():
            series[group][position] = aggregate(values)
    return times, dict(series)


def totals(scrape_: Scrape, name: str, by: Sequence[str]) -> dict[tuple[str, ...], float]:
    """sum by (by) (name) in one scrape."""
    summed: dict[tuple[str, ...], float] = defaultdict(float)
    for key, value in scrape_.samples.items():
        if key[0] == name:
            summed[_group(_labels(key), by)] += value
    return dict(summed)


# -- drawing -----------------------------------------------------------------------------------------------------
# One function a panel, each drawing what the dashboard panel of the same title queries.

NOT_OK = {"code": lambda code: code != "OK"}
PREDICTS = {"method": lambda method: method in ("Predict", "ModelInfer"), "model_type": lambda name: name != ""}


def _label(group: tuple[str, ...]) -> str:
    return " ".join(value or '""' for value in group)


def _lines(
    axis: Axes,
    times: Sequence[float],
    series: Mapping[tuple[str, ...], Sequence[float]],
    scale: float = 1.0,
    drawstyle: str = "default",
) -> None:
    for group in sorted(series):
        axis.plot(times, [value * scale for value in series[group]], label=_label(group), lw=1.4, drawstyle=drawstyle)


def _bars(axis: Axes, scrape_: Scrape, name: str, by: Sequence[str]) -> None:
    """sum by (by) (name_sum) / sum by (by) (name_count) in the last scrape, as bars marked with the count."""
    sums, counts = totals(scrape_, f"{name}_sum", by), totals(scrape_, f"{name}_count", by)
    groups = sorted(group for group in counts if counts[group])
    values = [1000 * sums[group] / counts[group] for group in groups]
    axis.barh(range(len(groups)), values, color="tab:blue")
    axis.set_yticks(range(len(groups)), [_label(group) for group in groups], fontsize=8)
    for position, (group, value) in enumerate(zip(groups, values, strict=True)):
        axis.text(value, position, f" {value:.3g} ms, n={counts[group]:.0f}", va="center", fontsize=8)
    axis.set_xlabel("mean ms since start (n: how many)", fontsize=8)
    axis.set_xlim(0, max(values, default=1) * 1.6)


def request_rate(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    _lines(axis, *rate_series(scrapes, "predserve_requests_total", ("method", "model_type")))
    axis.set_ylabel("calls/s")


def error_ratio(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    times, errors = rate_series(scrapes, "predserve_requests_total", (), NOT_OK)
    _, every = rate_series(scrapes, "predserve_requests_total", ())
    refused = errors.get((), [0.0] * len(times))
    ratio = [100 * e / a if a else math.nan for e, a in zip(refused, every.get((), refused), strict=True)]
    axis.plot(times, ratio, color="tab:red", lw=1.4, label="non-OK / all, %")
    axis.set_ylabel("% of calls")
    axis.set_ylim(bottom=0)
    twin = axis.twinx()
    _, by_code = rate_series(scrapes, "predserve_requests_total", ("code",), NOT_OK)
    for group in sorted(by_code):
        twin.plot(times, by_code[group], ":", lw=1.2, label=f"{group[0]} calls/s")
    twin.set_ylabel("non-OK calls/s", fontsize=8)
    twin.set_ylim(bottom=0, top=max((max(v) for v in by_code.values()), default=1) * 1.6)
    twin.tick_params(labelsize=8)
    twin.legend(loc="upper right", fontsize=7, frameon=False)


def latency(q: float) -> Callable[[Axes, Sequence[Scrape]], None]:
    def draw(axis: Axes, scrapes: Sequence[Scrape]) -> None:
        series = quantile_series(scrapes, q, "predserve_request_duration_seconds", ("model_type",), PREDICTS)
        _lines(axis, *series, scale=1000)
        axis.set_ylabel("ms")
        axis.set_ylim(bottom=0)

    return draw


def current_set(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    from matplotlib.ticker import MaxNLocator

    series = gauge_series(scrapes, "predserve_current_prediction_set", ("instance", "model_type"))
    _lines(axis, *series, drawstyle="steps-post")
    axis.set_ylabel("prediction set id")
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))


def loaded_fallback(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    times, loaded = gauge_series(scrapes, "predserve_model_loaded", ("model_type",), min)
    _, fallback = gauge_series(scrapes, "predserve_model_fallback", ("model_type",))
    for group in sorted(loaded):
        axis.plot(times, loaded[group], drawstyle="steps-post", label=f"loaded {group[0]}", lw=2)
    for group in sorted(fallback):
        axis.plot(times, fallback[group], "--", drawstyle="steps-post", label=f"fallback {group[0]}", lw=1.4)
    axis.set_ylim(-0.1, 1.6)
    axis.set_yticks([0, 1])


def load_durations(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    _bars(axis, scrapes[-1], "predserve_model_load_duration_seconds", ("model_type",))


def train_durations(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    _bars(axis, scrapes[-1], "predserve_train_duration_seconds", ("model_type", "outcome"))


def rows(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    _lines(axis, *rate_series(scrapes, "predserve_predict_rows_total", ("model_type",)))
    axis.set_ylabel("rows/s")


def runtime_answers(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    _lines(axis, *rate_series(scrapes, "predserve_runtime_answers_total", ("model_type", "runtime")))
    times, fallbacks = rate_series(scrapes, "predserve_runtime_fallbacks_total", ("model_type",))
    for group in sorted(fallbacks):
        axis.plot(times, fallbacks[group], "--", color="tab:red", label=f"fallback {group[0]}")
    if not fallbacks:
        axis.text(0.98, 0.97, "runtime fallbacks: none", ha="right", va="top", transform=axis.transAxes, fontsize=8)
    axis.set_ylabel("computations/s")


def reloads(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    from matplotlib.ticker import MaxNLocator

    _lines(axis, *gauge_series(scrapes, "predserve_reloads_total", ("model_type",), sum), drawstyle="steps-post")
    axis.set_ylabel("reloads since start")
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))


def batches(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    # The mean, not quantiles: sizes are whole numbers and the first bucket is le="1", so histogram_quantile
    # interpolates batches of one call to 0.5 (p50) and 0.99 (p99).
    times, sums = rate_series(scrapes, "predserve_batch_calls_sum", ())
    _, counts = rate_series(scrapes, "predserve_batch_calls_count", ())
    if not counts:
        axis.text(0.5, 0.5, "no micro-batched computation in this run", ha="center", transform=axis.transAxes)
        return
    mean = [s / c if c else math.nan for s, c in zip(sums[()], counts[()], strict=True)]
    axis.plot(times, mean, label="mean calls per computation", lw=1.4)
    axis.set_ylabel("calls per computation")
    axis.set_ylim(0, max((m for m in mean if not math.isnan(m)), default=1) * 1.6)
    twin = axis.twinx()
    twin.plot(times, counts[()], ":", color="tab:orange", label="batched computations/s", lw=1.2)
    twin.set_ylabel("computations/s", fontsize=8)
    twin.set_ylim(0, max(max(counts[()]), 0.1) * 1.6)
    twin.tick_params(labelsize=8)
    twin.legend(loc="upper right", fontsize=7, frameon=False)


def cpu(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    _lines(axis, *rate_series(scrapes, "process_cpu_seconds_total", ("instance",)))
    axis.set_ylabel("cores")
    axis.set_ylim(bottom=0)


def rss(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    _lines(axis, *gauge_series(scrapes, "process_resident_memory_bytes", ("instance",), sum), scale=1 / 2**20)
    axis.set_ylabel("MiB")
    axis.set_ylim(bottom=0)


def fds(axis: Axes, scrapes: Sequence[Scrape]) -> None:
    _lines(axis, *gauge_series(scrapes, "process_open_fds", ("instance",), sum))
    axis.set_ylabel("open fds")
    axis.set_ylim(bottom=0)


@dataclass(frozen=True)
class Panel:
    title: str  # the dashboard panel's title
    draw: Callable[[Axes, Sequence[Scrape]], None]
    over_time: bool = True  # a time series, marked with the run's events; else a summary since start


PANELS = [
    Panel("Request rate by method and model type", request_rate),
    Panel("Error ratio (non-OK over all calls)", error_ratio),
    Panel("p50 latency by model type (Predict, ModelInfer)", latency(0.5)),
    Panel("p99 latency by model type (Predict, ModelInfer)", latency(0.99)),
    Panel("Current prediction set per replica", current_set),
    Panel("Model loaded / fallback", loaded_fallback),
    Panel("Model load duration by model type", load_durations, over_time=False),
    Panel("Train duration by outcome", train_durations, over_time=False),
    Panel("Rows predicted per second", rows),
    Panel("Runtime answers by runtime, and runtime fallbacks", runtime_answers),
    Panel("Live reloads", reloads),
    Panel("Micro-batch size", batches),
    Panel("Process CPU (server and workers)", cpu),
    Panel("Process RSS (server and workers)", rss),
    Panel("Open file descriptors (server and workers)", fds),
]


def render(scrapes: Sequence[Scrape], events: Sequence[Event], instance: str, seconds: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    columns = 4  # the dashboard's rows: traffic, models, prediction work, processes
    figure, axes = plt.subplots(math.ceil(len(PANELS) / columns), columns, figsize=(22, 15), squeeze=False)
    for axis, panel in zip(axes.flat, PANELS, strict=False):
        panel.draw(axis, scrapes)
        axis.set_title(panel.title, fontsize=10, loc="left")
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=8)
        if not panel.over_time:
            continue
        axis.set_xlim(0, scrapes[-1].at)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f} s"))
        for event in events:
            axis.axvline(event.at, color="grey", linestyle=":", lw=1)
        handles, _ = axis.get_legend_handles_labels()
        if handles:
            if panel.draw not in (loaded_fallback, batches):  # those set their own range
                low, high = axis.get_ylim()
                axis.set_ylim(low, high + (high - low) * 0.12 * math.ceil(len(handles) / 2))
            axis.legend(fontsize=7, loc="upper left", frameon=False, ncol=2 if len(handles) > 3 else 1)
    for axis in list(axes.flat)[len(PANELS) :]:
        axis.axis("off")
    story = "; ".join(f"{event.at:.0f} s: {event.label}" for event in events)
    figure.suptitle(
        f"predserve, one replica ({instance}, --workers 2), {seconds:.0f} s of load, scraped every second; "
        f"rates over {RATE_WINDOW} s, quantiles over {QUANTILE_WINDOW} s\ndotted lines: {story}",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.955))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)


# -- the scrape excerpt -------------------------------------------------------------------------------------------

_FAMILY = re.compile(r"^# (?:HELP|TYPE) (\S+)")


def excerpt(text: str) -> str:
    """The predserve_* and process_* lines of a scrape, in its order, without bucket lines except a few of one
    series (`EXCERPT_BUCKET_SERIES`)."""
    kept = []
    for line in text.splitlines():
        comment = _FAMILY.match(line)
        name = comment.group(1) if comment else line.split("{", 1)[0].split(" ", 1)[0]
        if not name.startswith(("predserve_", "process_")):
            continue
        if name.endswith("_bucket") and not comment:
            wanted = all(part in line for part in EXCERPT_BUCKET_SERIES)
            if not (wanted and any(bucket in line for bucket in EXCERPT_BUCKETS)):
                continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def _scrape_block(text: str, readme: Path) -> tuple[int, int]:
    """Where the scrape markers' block starts and where its end marker is."""
    begin, end = text.find(SCRAPE_BEGIN), text.find(SCRAPE_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{readme} has no {SCRAPE_BEGIN} ... {SCRAPE_END} block to refresh")
    return begin, end


def refresh_readme(readme: Path, block: str) -> None:
    """Replaces what lies between the scrape markers with `block` in a fence; the rest is left as it is."""
    text = readme.read_text()
    begin, end = _scrape_block(text, readme)
    readme.write_text(f"{text[:begin]}{SCRAPE_BEGIN}\n```\n{block}```\n{text[end:]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=45.0, help="how long the load runs (default 45)")
    parser.add_argument("--png", type=Path, default=PNG)
    parser.add_argument("--scrape-out", type=Path, default=SCRAPE_EXCERPT)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    if not 10 <= args.seconds <= 600:
        parser.error("--seconds must be in 10..600")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("matplotlib is missing: .venv/bin/pip install -e '.[dev,bench]' (make dashboard does)")
    _scrape_block(args.readme.read_text(), args.readme)  # before a minute of running, not after
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    started = time.monotonic()
    scrapes, events, instance = run(args.seconds)
    render(scrapes, events, instance, args.seconds, args.png)
    block = excerpt(scrapes[-1].text)
    args.scrape_out.write_text(block)
    refresh_readme(args.readme, block)
    logger.info(
        "%d scrapes; wrote %s, %s and the scrape block of %s in %.0f s",
        len(scrapes),
        args.png,
        args.scrape_out,
        args.readme,
        time.monotonic() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
