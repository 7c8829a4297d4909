"""python -m bench run | compare [--rounds N] [--seconds S]: see bench/__init__.py."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.run import run_bench, run_compare

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("mode", choices=("run", "compare"))
    parser.add_argument("--rounds", type=int, default=3, help="rounds; every figure is the median (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time limit of each closed-loop run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the .md, .json and .png")
    parser.add_argument("--keep-labs", action="store_true", help="keep the temporary databases and artifacts")
    parser.add_argument(
        "--typed-rows",
        type=int,
        default=1_000_000,
        help="run: rows of the typed ingest and data-load measurement (0 skips it; default 1,000,000)",
    )
    args = parser.parse_args(argv)
    if args.mode == "run":
        run_bench(args.rounds, args.seconds, args.out, args.keep_labs, args.typed_rows)
    else:
        run_compare(args.rounds, args.seconds, args.out, args.keep_labs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
