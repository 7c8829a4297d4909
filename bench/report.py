"""Targets, the Markdown table, the JSON file and the latency plot under bench/results/."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _target(name: str, measured: float, reference: float, limit: float, at_most: bool, detail: str) -> dict[str, Any]:
    ratio = measured / reference if reference else float("nan")
    met = ratio <= limit if at_most else ratio >= limit
    return {
        "target": name,
        "ratio": round(ratio, 3),
        "limit": f"{'<=' if at_most else '>='} {limit}",
        "met": bool(met),
        "detail": detail,
    }


# The limits (issue 14, item 7), checked here and not in the tests.
C1_P50_VS_EMPTY = 1.3
CPU_PER_CALL_VS_EMPTY = 1.5
C8_VS_MLSERVER = {"iris_1row_c8": 2.5, "forest_1row_c8": 10.0}
ROWS_1000_VS_INPROCESS = {"iris_1000": 0.8, "forest_1000": 2.0}
STARTUP_VS_FLOOR = 1.2
ONE_ROW_KEYS = ("iris_1row", "forest_1row", "hgb_1row")
# Issue 23's limits for the typed sets (3 number + 2 string columns), on predserve's typed lab.
TYPED_ONE_ROW_KEYS = ("churn_lr_1row", "churn_hgb_1row")
TYPED_1000_KEYS = ("churn_lr_1000", "churn_hgb_1000")
TYPED_C8_VS_MLSERVER = {"churn_lr_1row_c8": 5.0, "churn_hgb_1row_c8": 5.0}
TYPED_INGEST_VS_NUMBERS = 1.0
TYPED_DATA_LOAD_ROWS_PER_S = 1_000_000


def _report(name: str, ratio: float, detail: str) -> dict[str, Any]:
    return {"target": name, "ratio": round(ratio, 3), "limit": "report", "met": None, "detail": detail}


def _has(s: dict[str, Any], *names: str) -> bool:
    """Whether the run measured every scenario a target needs (a partial run prints what it has)."""
    return all(name in s for name in names)


def _cpu(figures: dict[str, Any]) -> float:
    return float(figures.get("server_cpu_us_per_call", float("nan")))


def targets(results: dict[str, Any], peer_rps: dict[str, float], measured_peer: bool) -> list[dict[str, Any]]:
    s = results["scenarios"]
    found: list[dict[str, Any]] = []
    if "predserve/empty_c1" in s:
        empty = s["predserve/empty_c1"]
        for key in ONE_ROW_KEYS:
            if not _has(s, f"predserve/{key}_c1"):
                continue
            served = s[f"predserve/{key}_c1"]
            floor = s.get(f"inprocess/{key}", {}).get("p50_ms")
            found.append(
                _target(
                    f"{key} p50 at c1 vs empty V2 call on the same server",
                    served["p50_ms"],
                    empty["p50_ms"],
                    C1_P50_VS_EMPTY,
                    True,
                    f"{served['p50_ms']:.3f} ms vs {empty['p50_ms']:.3f} ms"
                    + (f" (in-process predict {floor:.3f} ms)" if floor is not None else ""),
                )
            )
        for key in ONE_ROW_KEYS:
            if not _has(s, f"predserve/{key}_c1"):
                continue
            served_cpu, empty_cpu = _cpu(s[f"predserve/{key}_c1"]), _cpu(empty)
            found.append(
                _target(
                    f"{key} server CPU per call at c1 vs empty V2 call",
                    served_cpu,
                    empty_cpu,
                    CPU_PER_CALL_VS_EMPTY,
                    True,
                    f"{served_cpu:.0f} vs {empty_cpu:.0f} µs per call",
                )
            )
    source = "MLServer's best set-up, " + ("measured in this run" if measured_peer else "the issue's figure")
    for key, limit in C8_VS_MLSERVER.items():
        if not _has(s, f"predserve/{key}"):
            continue
        rps = s[f"predserve/{key}"]["requests_per_s"]
        found.append(
            _target(
                f"{key} requests/s vs MLServer",
                rps,
                peer_rps[key],
                limit,
                False,
                f"{rps:.0f} vs {peer_rps[key]:.0f} req/s ({source})",
            )
        )
    for key, limit in ROWS_1000_VS_INPROCESS.items():
        if not _has(s, f"predserve/{key}_c1", f"inprocess/{key}"):
            continue
        rows, floor = s[f"predserve/{key}_c1"]["rows_per_s"], s[f"inprocess/{key}"]["rows_per_s"]
        found.append(
            _target(
                f"{key} rows/s vs in-process predict", rows, floor, limit, False, f"{rows:,.0f} vs {floor:,.0f} rows/s"
            )
        )
    if _has(s, "predserve/hgb_1000_c1", "inprocess/hgb_1000"):
        rows, floor = s["predserve/hgb_1000_c1"]["rows_per_s"], s["inprocess/hgb_1000"]["rows_per_s"]
        found.append(
            _report(
                "(for scale) hgb_1000 rows/s vs in-process predict", rows / floor, f"{rows:,.0f} vs {floor:,.0f} rows/s"
            )
        )
    for count in (20, 1):
        served, floor = s[f"startup/predserve_{count}"]["seconds"], s[f"startup/floor_{count}"]["floor_s"]
        parts = s[f"startup/floor_{count}"]
        entry = _target(
            f"start-up to first Predict, {count} model(s), runtimes included, vs interpreter + imports + joblib.load",
            served,
            floor,
            STARTUP_VS_FLOOR,
            True,
            f"{served:.2f} s vs {floor:.2f} s ({parts['interpreter_s']:.2f} + {parts['imports_s']:.2f} + "
            f"{parts['joblib_loads_s']:.2f})",
        )
        if count == 1:  # the issue sets its target at 20 models; one model is shown for scale
            entry.update(limit="report", met=None)
        found.append(entry)
    if _has(s, "startup/predserve_sklearn_20", "startup/floor_20"):
        served, floor = s["startup/predserve_sklearn_20"]["seconds"], s["startup/floor_20"]["floor_s"]
        found.append(
            _report(
                "(runtime) start-up, 20 models, --runtime sklearn, vs the same floor",
                served / floor,
                f"{served:.2f} s vs {floor:.2f} s (default runtime: {s['startup/predserve_20']['seconds']:.2f} s)",
            )
        )
    train = results["train"]
    found.append(
        _target(
            "Train persistence vs fit (100-tree forest, 10,000 rows)",
            train["median_persist_s"],
            train["median_fit_s"],
            0.05,
            True,
            f"{train['median_persist_s']:.3f} s vs {train['median_fit_s']:.3f} s",
        )
    )
    memory = results["memory"]
    base = memory["idle_rss_mib"] + memory["models_in_process_mib"]
    found.append(
        _target(
            "peak memory, 20 models, vs idle server + models in process",
            memory["loaded_peak_mib"],
            base,
            1.2,
            True,
            f"{memory['loaded_peak_mib']:.0f} MiB (now {memory['loaded_rss_mib']:.0f}) vs "
            f"{memory['idle_rss_mib']:.0f} + {memory['models_in_process_mib']:.0f} MiB",
        )
    )
    found += _typed_targets(s, results.get("typed_data"))
    found += _runtime_rows(s)
    for key in ("iris_1row_c8", "forest_1row_c8"):
        if not _has(s, f"predserve_workers2/{key}", f"predserve/{key}"):
            continue
        two, one = s[f"predserve_workers2/{key}"]["requests_per_s"], s[f"predserve/{key}"]["requests_per_s"]
        found.append(_report(f"(issue #4) {key}: --workers 2 vs 1", two / one, f"{two:.0f} vs {one:.0f} req/s"))
    for name in ("predserve/iris_1000_c2", "predserve_workers2/iris_1000_c2"):
        if not _has(s, name, "inprocess/iris_1000"):
            continue
        rows, floor = s[name]["rows_per_s"], s["inprocess/iris_1000"]["rows_per_s"]
        found.append(
            _report(
                f"(for scale) {name} rows/s vs in-process predict", rows / floor, f"{rows:,.0f} vs {floor:,.0f} rows/s"
            )
        )
    for on, off, label in (
        ("predserve", "predserve_nobatch", "runtime auto"),
        ("predserve_sklearn", "predserve_sklearn_nobatch", "--runtime sklearn"),
    ):
        if not _has(s, f"{on}/forest_1row_c8", f"{off}/forest_1row_c8"):
            continue
        batched, unbatched = s[f"{on}/forest_1row_c8"], s[f"{off}/forest_1row_c8"]
        found.append(
            _report(
                f"(lever) forest_1row_c8: micro-batching on vs off, {label}",
                batched["requests_per_s"] / unbatched["requests_per_s"],
                f"{batched['requests_per_s']:.0f} vs {unbatched['requests_per_s']:.0f} req/s; p50 "
                f"{batched['p50_ms']:.2f} vs {unbatched['p50_ms']:.2f} ms; server CPU {_cpu(batched):.0f} vs "
                f"{_cpu(unbatched):.0f} µs per call",
            )
        )
    return found


def _typed_targets(s: dict[str, Any], typed_data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 23: typed sets served one row and 1,000 rows a call, typed ingest, and Train's typed data load."""
    found = []
    for key in TYPED_ONE_ROW_KEYS:
        if not _has(s, f"predserve_typed/{key}_c1", "predserve_typed/empty_c1"):
            continue
        served_cpu, empty_cpu = _cpu(s[f"predserve_typed/{key}_c1"]), _cpu(s["predserve_typed/empty_c1"])
        found.append(
            _target(
                f"(typed) {key} server CPU per call at c1 vs empty V2 call",
                served_cpu,
                empty_cpu,
                CPU_PER_CALL_VS_EMPTY,
                True,
                f"{served_cpu:.0f} vs {empty_cpu:.0f} µs per call",
            )
        )
    for key in TYPED_1000_KEYS:
        if not _has(s, f"predserve_typed/{key}_c1", f"inprocess/{key}"):
            continue
        rows, floor = s[f"predserve_typed/{key}_c1"]["rows_per_s"], s[f"inprocess/{key}"]["rows_per_s"]
        found.append(
            _target(
                f"(typed) {key} rows/s vs in-process pipeline.predict(df)",
                rows,
                floor,
                1.0,
                False,
                f"{rows:,.0f} vs {floor:,.0f} rows/s",
            )
        )
    if typed_data:
        numbers, typed = typed_data["ingest"]["numbers"], typed_data["ingest"]["typed"]
        found.append(
            _target(
                f"(typed) ingest --csv of {typed_data['rows']:,} rows, 5 numbers + 3 strings with 5% empty, vs "
                "the same width all numbers",
                typed["rows_per_second"],
                numbers["rows_per_second"],
                TYPED_INGEST_VS_NUMBERS,
                False,
                f"{typed['rows_per_second']:,.0f} vs {numbers['rows_per_second']:,.0f} rows/s; CPU per row: CLI "
                f"{typed['cli_cpu_us_per_row']:.2f} vs {numbers['cli_cpu_us_per_row']:.2f} µs, server "
                f"{typed['server_cpu_us_per_row']:.2f} vs {numbers['server_cpu_us_per_row']:.2f} µs",
            )
        )
        load = typed_data["data_load"]
        found.append(
            _target(
                f"(typed) Train data load of {load['rows']:,} typed rows into its DataFrame, rows/s vs 1M",
                load["rows_per_second"],
                TYPED_DATA_LOAD_ROWS_PER_S,
                1.0,
                False,
                f"{load['rows_per_second']:,.0f} rows/s (best of the runs: {load['best_s']:.3f} s)",
            )
        )
    return found


def _runtime_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The compiled runtimes (default) against --runtime sklearn on the same artifacts, each beside its baselines:
    the empty call of the same concurrency on the default server, and the pipeline's predict in process."""
    found = []
    for name in s:
        server, scenario = name.split("/", 1)
        if not server.endswith("_sklearn"):
            continue
        default = server.removesuffix("_sklearn")
        if f"{default}/{scenario}" not in s:
            continue
        auto, sklearn = s[f"{default}/{scenario}"], s[name]
        key, concurrency = scenario.rsplit("_c", 1)
        parts = [
            f"{auto['requests_per_s']:.0f} vs {sklearn['requests_per_s']:.0f} req/s",
            f"p50 {auto['p50_ms']:.3f} vs {sklearn['p50_ms']:.3f} ms",
            f"server CPU {_cpu(auto):.0f} vs {_cpu(sklearn):.0f} µs per call",
        ]
        empty = s.get(f"{default}/empty_c{concurrency}")
        if empty and key.endswith("_1row"):
            p50, cpu = empty["p50_ms"], _cpu(empty)
            parts.append(
                f"vs empty call: p50 {auto['p50_ms'] / p50:.2f}x vs {sklearn['p50_ms'] / p50:.2f}x, "
                f"CPU {_cpu(auto) / cpu:.2f}x vs {_cpu(sklearn) / cpu:.2f}x"
            )
        inprocess = s.get(f"inprocess/{key}")
        if inprocess:
            parts.append(
                f"rows/s vs in process: {auto['rows_per_s'] / inprocess['rows_per_s']:.2f}x vs "
                f"{sklearn['rows_per_s'] / inprocess['rows_per_s']:.2f}x"
            )
        found.append(
            _report(
                f"(runtime) {scenario}: runtime auto vs --runtime sklearn" + (" (typed)" if "typed" in server else ""),
                auto["requests_per_s"] / sklearn["requests_per_s"],
                "; ".join(parts),
            )
        )
    return found


OURS = ("predserve", "predserve_workers2", "predserve_sklearn", "predserve_typed", "predserve_typed_sklearn")


def compare_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """predserve (default, and --workers 2) against MLServer's better set-up of the two, scenario by scenario."""
    s = results["scenarios"]
    found = []
    keys = (
        "iris_1row_c1",
        "iris_1row_c8",
        "forest_1row_c1",
        "forest_1row_c8",
        "hgb_1row_c1",
        "hgb_1row_c8",
        "iris_1000_c1",
        "forest_1000_c1",
        "hgb_1000_c1",
        "churn_lr_1row_c1",
        "churn_lr_1row_c8",
        "churn_hgb_1row_c1",
        "churn_hgb_1row_c8",
        "churn_lr_1000_c1",
        "churn_hgb_1000_c1",
    )
    limits = {**C8_VS_MLSERVER, **TYPED_C8_VS_MLSERVER}
    for key in keys:
        if not _has(s, f"mlserver_default/{key}", f"mlserver_inprocess/{key}"):
            continue
        peers = {setup: s[f"{setup}/{key}"] for setup in ("mlserver_default", "mlserver_inprocess")}
        best = max(peers.values(), key=lambda figures: figures["requests_per_s"])
        peer_text = ", ".join(
            f"{name.split('_')[1]} {f['requests_per_s']:.0f} req/s (p50 {f['p50_ms']:.2f} ms)"
            for name, f in peers.items()
        )
        for ours in OURS:
            if f"{ours}/{key}" not in s:
                continue
            # The issues' limits hold for the server as shipped; --runtime sklearn is shown for scale.
            limit = None if ours.endswith("_sklearn") else limits.get(key)
            figures = s[f"{ours}/{key}"]
            ratio = figures["requests_per_s"] / best["requests_per_s"]
            found.append(
                {
                    "target": f"{key} throughput, {ours} / MLServer best",
                    "ratio": round(ratio, 3),
                    "limit": f">= {limit}" if limit else "report",
                    "met": (ratio >= limit) if limit else None,
                    "detail": f"{figures['requests_per_s']:.0f} req/s (p50 {figures['p50_ms']:.2f} ms) vs {peer_text}",
                }
            )
    ours_start = s["startup/predserve_20"]["seconds"]
    peer_starts = {setup: s[f"startup/{setup}_20"]["seconds"] for setup in ("mlserver_default", "mlserver_inprocess")}
    best_start = min(peer_starts.values())
    found.append(
        {
            "target": "start-up to first Predict, 20 models, predserve / MLServer best",
            "ratio": round(ours_start / best_start, 3),
            "limit": "< 1",
            "met": ours_start < best_start,
            "detail": f"{ours_start:.2f} s vs "
            + ", ".join(f"{k.split('_')[1]} {v:.2f} s" for k, v in peer_starts.items()),
        }
    )
    return found


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"## predserve benchmark ({results['kind']}), {results['started_at']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; load average at start {' '.join(m['load_average_at_start'])}. "
        f"Medians of {results['rounds']} rounds of at most {results['seconds_per_run']} s per run"
        + (f"; MLServer {results['mlserver']}" if "mlserver" in results else "")
        + f"; the whole run took {results['duration_s']:.0f} s.",
        "",
        "| target | ratio | limit | met | measured |",
        "|---|---|---|---|---|",
    ]
    for t in results["targets"]:
        met = {True: "PASS", False: "**MISS**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {t['ratio']} | {t['limit']} | {met} | {t['detail']} |")
    lines += [
        "",
        "| scenario | p50 ms | p90 ms | p99 ms | req/s | rows/s | errors | generator CPU % | server CPU % | "
        "server CPU µs/call | others' CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in results["scenarios"].items():
        if "p50_ms" not in f:
            continue
        cells = [
            f.get(k, "")
            for k in (
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "requests_per_s",
                "rows_per_s",
                "errors",
                "generator_cpu_pct",
                "server_cpu_pct",
                "server_cpu_us_per_call",
                "other_cpu_pct",
            )
        ]
        lines.append(f"| {name} | " + " | ".join(_cell(c) for c in cells) + " |")
    starts = {n: f for n, f in results["scenarios"].items() if n.startswith("startup/")}
    if starts:
        lines += ["", "| start-up | seconds |", "|---|---|"]
        for name, f in starts.items():
            lines.append(f"| {name} | {_cell(f.get('seconds', f.get('floor_s', '')))} |")
    lines += [
        "",
        "CPU % is of one core over the run (the machine has "
        f"{m['cores']}); 'others' is everything else on the machine meanwhile (other engineers' test runs), "
        "so a high figure there marks a noisy run. A generator near 100% of a core is saturated. Server CPU per call "
        "is the server's user + system time from /proc over the calls of the run (10 ms clock ticks).",
    ]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def pyplot() -> Any | None:
    """matplotlib's pyplot drawing to files, or None (with a warning) where the bench extra is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return None
    return plt


def plot(results: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    rows = [(n, f) for n, f in results["scenarios"].items() if "p99_ms" in f]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.5))
    names = [n for n, _ in rows]
    for offset, (q, color) in enumerate((("p50_ms", "#4c72b0"), ("p90_ms", "#dd8452"), ("p99_ms", "#c44e52"))):
        ax.barh(
            [i + (offset - 1) * 0.27 for i in range(len(rows))],
            [f[q] for _, f in rows],
            height=0.27,
            color=color,
            label=q.split("_")[0],
        )
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_title(f"predserve {results['kind']}, {results['started_at']}: latency percentiles per scenario")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: dict[str, Any], out_dir: Path, kind: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{kind}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out_dir / f"{kind}.md").write_text(table)
    plot(results, out_dir / f"{kind}.png")
    print(table)
