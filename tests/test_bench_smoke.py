"""The load generator, the reports and make bench-scale, on tiny runs: their structure, never their speed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import loadgen, report, scale, scenarios
from harness import ports
from tests.support import ServerProcess, iris_rows


def test_a_short_closed_loop_run_reports_every_figure(trained_server: ServerProcess) -> None:
    _, rows = iris_rows()
    features = np.asarray([f for f, _ in rows[:2]])
    request = loadgen.infer_request("iris_classifier", features)
    assert trained_server.process is not None
    result = loadgen.run_closed_loop(
        trained_server.target,
        loadgen.infer_call(request),
        concurrency=2,
        max_requests=30,
        max_seconds=30,
        rows_per_request=2,
        server_pid=trained_server.process.pid,
        check=loadgen.answer_has_rows(2),
    )
    summary = result.summary()
    assert summary["requests"] == 30 and summary["errors"] == 0
    for key in ("p50_ms", "p90_ms", "p99_ms", "requests_per_s", "rows_per_s", "generator_cpu_pct", "server_cpu_pct"):
        assert summary[key] >= 0
    assert summary["rows_per_s"] == pytest.approx(2 * summary["requests_per_s"], rel=0.01)
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]


def test_wrong_answers_and_errors_are_counted_not_timed(trained_server: ServerProcess) -> None:
    request = loadgen.infer_request("no_such_model", np.zeros((1, 4)))
    result = loadgen.run_closed_loop(
        trained_server.target, loadgen.infer_call(request), 1, max_requests=5, max_seconds=30, warmup_requests=0
    )
    assert result.errors == 5 and result.requests == 0
    assert result.error_samples[0].startswith("NOT_FOUND")


def test_the_empty_call_and_the_label_check(trained_server: ServerProcess) -> None:
    result = loadgen.run_closed_loop(trained_server.target, loadgen.empty_call, 1, max_requests=10, max_seconds=30)
    assert result.requests == 10
    _, rows = iris_rows()
    features = np.asarray([f for f, _ in rows[:3]])
    scenarios.check_labels(trained_server.target, "iris_classifier", features, np.asarray([t for _, t in rows[:3]]))
    with pytest.raises(AssertionError):
        scenarios.check_labels(trained_server.target, "iris_classifier", features, np.asarray([2, 2, 2]))


def test_a_busy_port_is_refused(trained_server: ServerProcess) -> None:
    with pytest.raises(ports.BusyPort):
        ports.free_port(port=trained_server.port)


def test_the_report_prints_every_target(tmp_path: Path) -> None:
    run = {"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "requests_per_s": 100.0, "rows_per_s": 100.0, "errors": 0}
    names = (
        [f"predserve/{k}_c{c}" for k in ("iris_1row", "forest_1row") for c in (1, 8)]
        + [
            "predserve/empty_c1",
            "predserve/iris_1000_c1",
            "predserve/forest_1000_c1",
            "predserve_nobatch/forest_1row_c8",
            "predserve/iris_1000_c2",
            "predserve_workers2/iris_1000_c2",
            "predserve_workers2/iris_1row_c8",
            "predserve_workers2/forest_1row_c8",
        ]
        + [f"inprocess/{k}" for k in ("iris_1row", "forest_1row", "iris_1000", "forest_1000")]
    )
    scenarios_ = {name: dict(run) for name in names}
    for count in (1, 20):
        scenarios_[f"startup/predserve_{count}"] = {"seconds": 2.0}
        scenarios_[f"startup/floor_{count}"] = {
            "floor_s": 1.9,
            "interpreter_s": 0.1,
            "imports_s": 1.5,
            "joblib_loads_s": 0.3,
        }
    results = {
        "kind": "bench",
        "started_at": "now",
        "duration_s": 1.0,
        "rounds": 1,
        "seconds_per_run": 1.0,
        "machine": {
            "cpu": "test",
            "cores": 2,
            "memory_gib": 1.0,
            "kernel": "k",
            "python": "3",
            "versions": {},
            "load_average_at_start": ["0", "0", "0"],
        },
        "scenarios": scenarios_,
        "train": {"median_fit_s": 10.0, "median_persist_s": 0.2},
        "memory": {
            "idle_rss_mib": 100.0,
            "models_in_process_mib": 10.0,
            "loaded_rss_mib": 115.0,
            "loaded_peak_mib": 120.0,
        },
    }
    results["targets"] = report.targets(results, {"iris_1row_c8": 50.0, "forest_1row_c8": 10.0}, measured_peer=False)
    report.write(results, tmp_path, "bench")
    table = (tmp_path / "bench.md").read_text()
    for fragment in (
        "p50 at c1",
        "requests/s vs MLServer",
        "rows/s vs in-process",
        "start-up",
        "Train persistence",
        "peak memory",
        "--workers 2 vs 1",
        "micro-batching",
    ):
        assert fragment in table
    assert (tmp_path / "bench.json").exists()


def test_a_cost_at_three_sizes_is_tabled_against_the_first() -> None:
    curve = scale.Curve("data load", {1_000_000: 2e-6, 10_000: 1e-6, 100_000: 1.5e-6}, 1.3, target_rate=600_000)
    rows = [figure.row() for figure in curve.figures()]
    assert [row["cost"] for row in rows] == ["data load per row, 10k vs 100k rows", "data load per row, 10k vs 1M rows"]
    assert [row["ratio"] for row in rows] == [1.5, 2.0]
    assert [row["met"] for row in rows] == ["**MISS**", "**MISS**"]
    assert rows[0]["small"] == "1.000 µs / row"
    assert rows[0]["note"] == "1,000,000 vs 666,667 rows/s (target >= 600,000 at 100k: met)"
    assert "500,000 rows/s (target >= 600,000 at 1M: MISSED)" in rows[1]["note"]
    assert curve.points()["rows"] == [10_000, 100_000, 1_000_000]


def test_row_counts_are_ascending_and_one_count_means_a_tenth_of_it_too() -> None:
    assert scale.row_counts("2000,20000,200000") == (2000, 20_000, 200_000)
    assert scale.row_counts("20000") == (2000, 20_000)
    for wrong in ("20000,2000", "1000,1000", "50,500", "10k"):
        with pytest.raises(argparse.ArgumentTypeError):
            scale.row_counts(wrong)


@pytest.mark.slow
def test_bench_scale_at_tiny_sizes_writes_every_figure(tmp_path: Path) -> None:
    # 51 small sets: each gc retires 50 of them, whatever the history.
    sizes = scale.Sizes(
        small_types=2,
        large_types=3,
        small_sets=51,
        large_sets=52,
        calls=3,
        startups=1,
        data_rows=(200, 400),
        ingest_rows=(200, 400),
    )
    scale.run(sizes, tmp_path, keep=False)
    written = json.loads((tmp_path / "scale.json").read_text())
    costs = [row["cost"] for row in written["figures"]]
    for fragment in (
        "start-up",
        "ListModels",
        "Predict p50",
        "ListPredictionSets",
        "Predict pinned",
        "gc retiring",
        "Train's data load",
        "Train's non-fit time",
        "ingest --csv",
    ):
        assert sum(fragment in cost for cost in costs) == 1, fragment
    for row in written["figures"]:
        assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    assert [curve["rows"] for curve in written["curves"]] == [[200, 400], [200, 400], [200, 400]]
    table = (tmp_path / "scale.md").read_text()
    assert all(cost in table for cost in costs)
    assert (tmp_path / "scale.png").exists() == (importlib.util.find_spec("matplotlib") is not None)
