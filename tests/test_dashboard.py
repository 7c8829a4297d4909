"""The operator's kit: the Grafana dashboard, its PNG and the scrape excerpt of docs/observability.md, held to a
real server.

The metric names come from a real scrape of a real server (two workers, a Train, Predicts, a ModelInfer and an
unknown model type), never from a list kept here: a metric renamed in the server fails these tests until the
dashboard and the excerpt (`make dashboard`) follow.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import metrics
from harness.waiting import wait_until
from predserve.client import ModelNotFound
from predserve.protos import grpc_predict_v2_pb2 as v2
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.support import IRIS_PROBES, PROJECT_ROOT, ServerProcess, iris_rows

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "predserve-dashboard.json"
PNG = PROJECT_ROOT / "docs" / "observability-dashboard.png"
SCRAPE_EXCERPT = PROJECT_ROOT / "docs" / "observability-scrape.txt"
PAGE = PROJECT_ROOT / "docs" / "observability.md"
METRIC_DEFINITIONS = PROJECT_ROOT / "server" / "observability" / "prometheus.py"
RENDER_SCRIPT = PROJECT_ROOT / "scripts" / "render_dashboard.py"
SCRAPE_BLOCK = re.compile(r"<!-- scrape:begin -->\n```\n(.*?)```\n<!-- scrape:end -->", re.DOTALL)

MODEL_TYPE = "iris_classifier"

# The panels issue 15 asks of the dashboard, each a title of it.
REQUIRED_PANELS = [
    "Request rate by method and model type",
    "Error ratio (non-OK over all calls)",
    "p50 latency by model type (Predict, ModelInfer)",
    "p99 latency by model type (Predict, ModelInfer)",
    "Current prediction set per replica",
    "Model loaded / fallback",
    "Model load duration by model type",
    "Train duration by outcome",
    "Rows predicted per second",
    "Runtime answers by runtime, and runtime fallbacks",
    "Process CPU (server and workers)",
    "Process RSS (server and workers)",
]
# Declared by the server, but with no series until their event: a healthy server never shows them to a test.
EXPORTED_ONLY_AFTER = {"predserve_runtime_fallbacks_total": "a compiled form raises at Predict"}
PROMQL_FUNCTIONS = {"sum", "min", "max", "rate", "increase", "histogram_quantile"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


@dataclass(frozen=True)
class Scraped:
    text: str
    sample_names: frozenset[str]  # as exported: NAME_total, NAME_bucket, NAME_sum, NAME_count, ...
    families: dict[str, str]  # the name of each `# TYPE` line, and its type


def parse(text: str) -> Scraped:
    samples = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    return Scraped(text, frozenset(samples), type_lines(text))


def type_lines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def scrape(port: int) -> str:
    return metrics.scrape(metrics.metrics_url(port))


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """A scrape of predserve with two workers, once every kind of series it exports in normal work exists."""
    workdir = tmp_path_factory.mktemp("dashboard")
    server, metrics_port = metrics.start_server_with_metrics(ServerProcess, workdir, ["--reload-interval", "0.2"])
    try:
        with server.client() as client:
            names, rows = iris_rows()
            client.ingest("iris", rows, names)
            client.train(MODEL_TYPE, dataset="iris", algorithm="logistic_regression")
            # The worker that did not answer the Train loads the set by live reload: a load and a reload.
            wait_until(
                lambda: f'predserve_reloads_total{{model_type="{MODEL_TYPE}"}} 1.0' in scrape(metrics_port),
                30,
                "the other worker to reload the trained set",
            )
            for probe in IRIS_PROBES:
                client.predict(MODEL_TYPE, [probe])
            with pytest.raises(ModelNotFound):
                client.predict("no_such_model", [IRIS_PROBES[0]])
        with grpc.insecure_channel(server.target) as channel:
            matrix = np.asarray(IRIS_PROBES, dtype="<f8")
            features = v2.ModelInferRequest.InferInputTensor(name="features", datatype="FP64", shape=matrix.shape)
            request = v2.ModelInferRequest(
                model_name=MODEL_TYPE, inputs=[features], raw_input_contents=[matrix.tobytes()]
            )
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        yield parse(scrape(metrics_port))
    finally:
        server.stop()


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(SELECTOR, LABEL): the selector is PromQL, the label a label's name.
            query = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
            assert query is not None and query.group(2) == variable["name"], variable
            found.append((f"variable {variable['name']}", query.group(1)))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects; raises on a function this dashboard has no use for."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)  # matchers, ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", " ", text)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            assert word in PROMQL_FUNCTIONS, f"{expr!r} calls {word}(), not a PromQL function this dashboard uses"
        elif word not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def declared_sample_names() -> set[str]:
    """The series names of every metric server/observability/prometheus.py defines, read from its source."""
    suffixes = {"Counter": ("",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for node in ast.walk(ast.parse(METRIC_DEFINITIONS.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in suffixes:
            first = node.args[0]
            assert isinstance(first, ast.Constant) and isinstance(first.value, str)
            names |= {first.value + suffix for suffix in suffixes[node.func.id]}
    return names


@functools.cache
def render_script() -> ModuleType:
    """scripts/render_dashboard.py, imported: its panels and its histogram_quantile."""
    spec = importlib.util.spec_from_file_location("render_dashboard", RENDER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_dashboard_is_grafana_json_with_its_panels_and_variables() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == variables["instance"]["type"] == "query"
    titles = [panel["title"] for panel in panels()]
    assert [title for title in REQUIRED_PANELS if title not in titles] == []
    assert len(titles) == len(set(titles))
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        cells = {(grid["x"] + x, grid["y"] + y) for x in range(grid["w"]) for y in range(grid["h"])}
        assert grid["x"] + grid["w"] <= 24 and not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], panel["title"]


def test_every_expression_names_only_metrics_a_real_server_exports(scraped: Scraped) -> None:
    declared = declared_sample_names()
    histograms = {name for name, kind in scraped.families.items() if kind == "histogram"}
    assert {"predserve_request_duration_seconds", "predserve_train_duration_seconds"} <= histograms
    assert set(EXPORTED_ONLY_AFTER) <= declared
    used = set()
    for where, expr in expressions():
        names = metric_names(expr)
        assert names, f"{where}: {expr!r} selects no metric"
        assert not names & histograms, f"{where}: a histogram is selected as _bucket, _sum or _count, not bare"
        unknown = names - scraped.sample_names - set(EXPORTED_ONLY_AFTER)
        assert unknown == set(), f"{where}: {sorted(unknown)} not in a real scrape:\n{scraped.text}"
        used |= names
    assert {"predserve_request_duration_seconds_bucket", "predserve_current_prediction_set"} <= used
    assert {name for name in used if name.startswith("process_")} >= {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    }


def test_the_png_draws_the_dashboards_panels() -> None:
    script = render_script()
    assert [panel.title for panel in script.PANELS] == [panel["title"] for panel in panels()]
    assert PNG.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quantiles_are_interpolated_within_a_bucket_as_histogram_quantile_does() -> None:
    quantile = render_script().histogram_quantile
    buckets = [(0.001, 0.0), (0.01, 10.0), (0.1, 20.0), (float("inf"), 20.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.25, buckets) == pytest.approx(0.0055)
    assert quantile(0.75, buckets) == pytest.approx(0.055)
    assert quantile(0.99, [(0.1, 0.0), (1.0, 0.0), (float("inf"), 4.0)]) == 1.0  # the +Inf bucket: highest bound
    assert quantile(0.5, [(0.1, 1.0), (float("inf"), 1.0)]) == pytest.approx(0.05)  # the first bucket starts at 0


def test_the_readme_shows_the_generated_scrape_excerpt_verbatim() -> None:
    blocks = SCRAPE_BLOCK.findall(PAGE.read_text())
    assert blocks == [SCRAPE_EXCERPT.read_text()], (
        "run `make dashboard` to refresh the scrape block of docs/observability.md"
    )


def test_the_scrape_excerpt_has_the_families_a_real_server_exports(scraped: Scraped) -> None:
    excerpt = SCRAPE_EXCERPT.read_text()
    in_excerpt = type_lines(excerpt)
    ours = {name: kind for name, kind in scraped.families.items() if name.startswith(("predserve_", "process_"))}
    assert sorted(set(in_excerpt) - set(ours)) == [], "the excerpt names families a real server no longer exports"
    assert sorted(set(ours) - set(in_excerpt)) == [], "a real server exports families the excerpt lacks"
    assert {name: in_excerpt[name] for name in ours} == ours
    samples = [line for line in excerpt.splitlines() if not line.startswith("#")]
    assert {line.split("{")[0].split(" ")[0] for line in samples} <= scraped.sample_names
    buckets = {re.sub(r'le="[^"]*",?', "", line.split(" ")[0]) for line in samples if "_bucket{" in line}
    assert len(buckets) == 1, "the excerpt keeps the bucket lines of one series"


def test_the_readme_documents_every_metric(scraped: Scraped) -> None:
    section = PAGE.read_text()
    documented = set(re.findall(r"`([a-z_]+)`", section))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in declared_sample_names()}
    exported = {name for name in scraped.families if name.startswith(("predserve_", "process_"))}
    assert sorted((families | exported) - documented) == []
