"""Ingest of a large CSV through the CLI: rows per second, and a kill -9 in the middle that loses nothing.

    python -m bench.ingest [--rows 1000000] [--features 10] [--no-crash] [--keep]

It writes a CSV (column f0 is the row's number, so that the stored rows can be checked one by one), then:
1. throughput: a real server (harness/launcher.py) on a fresh SQLite database, and `predserve ingest --csv`
   timed from start to exit, as a person runs it (start-up, the file's SHA-256, every batch);
   beside it, the client's share alone: reading and encoding every batch without sending it;
2. crash: the same command against another fresh server, killed with SIGKILL once a few batches are stored;
   the batches stored then must be whole, and cover every batch the CLI saw acknowledged. The server is
   started again on the same database and the same command run again: it must resume after the stored
   batches and end with exactly the file's rows, each once, in the file's order.
Not a test: it asserts nothing about speed; the figures are printed (and written with --json).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procstats import cpu_seconds, process_tree
from harness.launcher import PROJECT_ROOT, ServerProcess
from harness.waiting import wait_until
from predserve.client.batches import BATCH_ROWS
from predserve.client.csvfile import CsvFile
from predserve.protos import predserve_pb2 as pb

DATASET = "bench_ingest"
CLI = PROJECT_ROOT / ".venv" / "bin" / "predserve"
TARGET_RATE = 150_000  # rows/s, issue 17


def write_csv(path: Path, rows: int, features: int, seed: int = 17) -> None:
    """f0 is the row's number; the other features are normal noise at full precision; the label is 0 or 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        handle.write(",".join([f"f{i}" for i in range(features)] + ["label"]) + "\n")
        for start in range(0, rows, 100_000):
            count = min(100_000, rows - start)
            noise = rng.normal(size=(count, features - 1))
            labels = (noise[:, 0] > 0).astype(int)
            lines = (
                f"{float(start + i)!r}," + ",".join(map(repr, values)) + f",{label}"
                for i, (values, label) in enumerate(zip(noise.tolist(), labels.tolist(), strict=True))
            )
            handle.write("\n".join(lines) + "\n")


def _fresh(directory: Path) -> Path:
    directory.mkdir(parents=True)
    return directory


def cli_ingest(server: ServerProcess, csv_path: Path, *extra: str) -> list[str]:
    return [str(CLI), "--target", server.target, "--json", "ingest", "--dataset", DATASET, "--csv", str(csv_path),
            "--target-column", "label", *extra]  # fmt: skip


def client_share(csv_path: Path, batch_rows: int) -> float:
    """Seconds to read, parse and encode every batch, as the CLI does, without a server."""
    csv_file = CsvFile(csv_path, "label")
    started = time.perf_counter()
    csv_file.scan()
    for number, batch in enumerate(csv_file.batches(batch_rows)):
        batch.messages(pb.IngestHistoryRequest(dataset=DATASET, ingest_id="bench", batch_number=number))
    return time.perf_counter() - started


def throughput(workdir: Path, csv_path: Path, rows: int) -> dict[str, Any]:
    server = ServerProcess(_fresh(workdir / "throughput")).start()
    try:
        assert server.process is not None  # started above
        server_pids = process_tree(server.process.pid)
        server_cpu, cli_cpu = cpu_seconds(server_pids), _children_cpu_seconds()
        started = time.perf_counter()
        result = subprocess.run(cli_ingest(server, csv_path), capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        server_cpu, cli_cpu = cpu_seconds(server_pids) - server_cpu, _children_cpu_seconds() - cli_cpu
    finally:
        server.kill()
    if result.returncode != 0:
        raise RuntimeError(f"the ingest failed: {result.stderr}")
    answer = json.loads(result.stdout)
    if answer["total_rows"] != rows:
        raise RuntimeError(f"stored {answer['total_rows']} rows of {rows}")
    # CPU per row of each side: with 2 cores, the sum bounds the rate however well the two overlap.
    return {
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "cli_cpu_us_per_row": cli_cpu / rows * 1e6,
        "server_cpu_us_per_row": server_cpu / rows * 1e6,
    }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _acknowledged_rows(progress_text: str) -> int:
    """The last count tqdm printed ("300k/1.00M"): rows of batches the CLI saw acknowledged; 0 without tqdm."""
    counts = re.findall(r"\|\s*([0-9.]+)([kM]?)/", progress_text)
    if not counts:
        return 0
    number, scale = counts[-1]
    return round(float(number) * {"": 1, "k": 1e3, "M": 1e6}[scale])


def _stored(db: Path) -> tuple[int, list[tuple[int, int, int]]]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = ?", (DATASET,)).fetchone()[0]
        batches = conn.execute(
            "SELECT batch_number, first_row, row_count FROM ingest_batches ORDER BY batch_number"
        ).fetchall()
    return int(rows), [tuple(b) for b in batches]


def crash_and_resume(workdir: Path, csv_path: Path, rows: int, kill_after_batches: int) -> dict[str, Any]:
    server = ServerProcess(_fresh(workdir / "crash")).start()
    try:
        progress_path = workdir / "crash-progress.txt"
        with open(progress_path, "w") as progress:
            ingest = subprocess.Popen(cli_ingest(server, csv_path), stdout=subprocess.DEVNULL, stderr=progress)

            def enough_stored() -> bool:
                if ingest.poll() is not None:
                    raise RuntimeError("the ingest ended before the kill")
                return len(_stored(Path(server.db))[1]) >= kill_after_batches

            wait_until(enough_stored, 600, f"{kill_after_batches} stored batches", interval=0.02)
            server.kill()
            exit_code = ingest.wait(120)
        killed_rows, killed_batches = _stored(Path(server.db))
        acknowledged = _acknowledged_rows(progress_path.read_text())
        checks = {
            "the CLI failed once the server was gone": exit_code != 0,
            "no batch is stored in part": killed_rows == sum(b[2] for b in killed_batches),
            "the stored batches are 0..k-1, row after row": all(
                b[0] == i and b[1] == sum(c[2] for c in killed_batches[:i]) for i, b in enumerate(killed_batches)
            ),
            "every acknowledged batch is stored": acknowledged <= killed_rows,
        }
        server.start()
        result = subprocess.run(cli_ingest(server, csv_path), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the resumed ingest failed: {result.stderr}")
        answer = json.loads(result.stdout)
        final_rows, final_batches = _stored(Path(server.db))
        with sqlite3.connect(f"{Path(server.db).as_uri()}?mode=ro", uri=True) as conn:
            numbers = [
                row[0]
                for row in conn.execute(
                    "SELECT json_extract(features, '$[0]') FROM data_history WHERE dataset = ? ORDER BY id",
                    (DATASET,),
                )
            ]
        checks.update(
            {
                "the re-run added only the rows not stored before": answer["rows_added"] == rows - killed_rows,
                "the batches stored before the kill are kept": final_batches[: len(killed_batches)] == killed_batches,
                "the dataset holds exactly the file's rows": final_rows == rows,
                "each row once, in the file's order": numbers == [float(i) for i in range(rows)],
            }
        )
    finally:
        server.kill()
    return {
        "killed_after_batches": len(killed_batches),
        "rows_stored_at_kill": killed_rows,
        "rows_acknowledged_at_kill": acknowledged,
        "rows_added_by_rerun": answer["rows_added"],
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS, help="the CLI's default")
    parser.add_argument("--kill-after-batches", type=int, default=4)
    parser.add_argument("--no-crash", action="store_true", help="only the throughput")
    parser.add_argument("--json", type=Path, help="write the figures there too")
    parser.add_argument("--keep", action="store_true", help="keep the CSV, databases and logs")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="predserve-bench-ingest-"))
    csv_path = workdir / "history.csv"
    started = time.perf_counter()
    write_csv(csv_path, args.rows, args.features)
    print(f"wrote {args.rows} rows x {args.features} features ({csv_path.stat().st_size / 1e6:.0f} MB) "
          f"in {time.perf_counter() - started:.1f}s: {csv_path}")  # fmt: skip
    figures: dict[str, Any] = {"rows": args.rows, "features": args.features, "batch_rows": args.batch_rows}
    client_seconds = client_share(csv_path, args.batch_rows)
    figures["client_only"] = {"seconds": client_seconds, "rows_per_second": args.rows / client_seconds}
    figures["cli"] = throughput(workdir, csv_path, args.rows)
    print(f"client alone (read, parse, encode): {client_seconds:.2f}s, {args.rows / client_seconds:,.0f} rows/s")
    cli = figures["cli"]
    print(f"predserve ingest --csv, end to end: {cli['seconds']:.2f}s, {cli['rows_per_second']:,.0f} rows/s "
          f"(target {TARGET_RATE:,}); CPU per row: CLI {cli['cli_cpu_us_per_row']:.2f} us, "
          f"server {cli['server_cpu_us_per_row']:.2f} us")  # fmt: skip
    ok = True
    if not args.no_crash:
        crash = crash_and_resume(workdir, csv_path, args.rows, args.kill_after_batches)
        figures["crash"] = crash
        ok = crash["ok"]
        print(
            f"kill -9 after {crash['killed_after_batches']} stored batches ({crash['rows_stored_at_kill']} rows, "
            f"{crash['rows_acknowledged_at_kill']} acknowledged); the re-run added {crash['rows_added_by_rerun']}"
        )
        for check, passed in crash["checks"].items():
            print(f"  {'ok  ' if passed else 'FAIL'} {check}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if args.keep:
        print(f"kept {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
