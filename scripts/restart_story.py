"""The restart story, run for real: train, predict, stop (cleanly, then with kill -9), start, predict again.

`--mode check` (make restart-test) exits non-zero unless every restart gives identical answers
from the same prediction sets with no retraining; `--mode demo` (make demo) tells the same story
to a person. `run_story()` returns the figures the report's validation section is made of.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.launcher import PROJECT_ROOT, ServerProcess  # noqa: E402

PROBES = ["5.1,3.5,1.4,0.2", "6.7,3.0,5.2,2.3", "5.9,3.0,4.2,1.5"]
MODELS = {"iris_classifier": "logistic_regression", "iris_forest": "random_forest"}
# A typed model: named columns of numbers and strings with missing values, trained twice so that the first set,
# no longer current, is asked for by id (a pinned Predict) after each restart too.
TYPED = "churn_classifier"
TYPED_PROBES = [
    {"age": 52, "income": 3200, "plan": "pro", "country": "fr"},
    {"age": 31, "income": None, "plan": "basic", "country": "de"},
    {"age": 45, "income": 1800, "plan": None, "country": "jp"},  # a missing plan, a country never seen
]


def churn_csv() -> str:
    """80 customers: ages, incomes (some empty), plans (some empty), countries, and whether they left."""
    lines = ["age,income,plan,country,churned"]
    for i in range(80):
        age, plan = 20 + (i * 7) % 50, ("basic", "pro", "team")[i % 3]
        income = "" if i % 11 == 0 else str(1000 + (i * 137) % 5000)
        churned = int((plan == "pro" and age > 40) or i % 5 == 0)
        lines.append(f"{age},{income},{'' if i % 13 == 0 else plan},{('fr', 'de', 'us')[(i // 3) % 3]},{churned}")
    return "\n".join(lines) + "\n"


LOAD_LINE = re.compile(r"loaded model type=(\S+) set=(\d+) path=(\S+) load_time=([\d.]+)s")
READY_LINE = re.compile(r"predserve ready on \S+ \(.*start-up ([\d.]+)s\)")


@dataclass
class Step:
    command: str
    output: Any


@dataclass
class Phase:
    name: str
    seconds_to_ready: float
    loads: list[dict[str, Any]]
    predictions: dict[str, Any]
    # Which runtime answered each model type: a compiled form's, or "sklearn" (ListModels says).
    runtimes: dict[str, str]


@dataclass
class StoryResult:
    steps: list[Step] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    trains_after_first_start: int = 0

    def failures(self) -> list[str]:
        baseline = self.phases[0].predictions
        problems = [
            f"{phase.name}: answers differ from before the restart"
            for phase in self.phases[1:]
            if phase.predictions != baseline
        ]
        problems += [
            f"{phase.name}: answered by {phase.runtimes}, before the restart by {self.phases[0].runtimes}"
            for phase in self.phases[1:]
            if phase.runtimes != self.phases[0].runtimes
        ]
        if self.trains_after_first_start:
            problems.append(f"{self.trains_after_first_start} Train(s) ran after a restart")
        return problems


class Story:
    def __init__(self, workdir: Path, narrate: bool) -> None:
        self.workdir = workdir
        self.server = ServerProcess(workdir)
        self.pinned_set = 0
        self.narrate = narrate
        self.result = StoryResult()

    def say(self, text: str) -> None:
        if self.narrate:
            print(text, flush=True)

    def cli(self, *args: str) -> Any:
        command = ["predserve", "--target", self.server.target, "--json", *args]
        shown = shlex.join(command)
        self.say(f"\n$ {shown}")
        completed = subprocess.run(
            [sys.executable, "-m", "predserve.client", *command[1:]], cwd=PROJECT_ROOT, capture_output=True, text=True
        )
        if completed.returncode != 0:
            raise SystemExit(f"command failed: {shown}\n{completed.stderr}")
        output = json.loads(completed.stdout)
        self.say(json.dumps(output, indent=2))
        self.result.steps.append(Step(shown, output))
        return output

    def start(self, phase: str) -> float:
        started = time.perf_counter()
        self.server.start()
        elapsed = time.perf_counter() - started
        self.say(f"\n== {phase}: server ready on {self.server.target} after {elapsed:.2f}s ==")
        return elapsed

    def predictions(self) -> dict[str, Any]:
        answers = {}
        for model_type in MODELS:
            rows = [arg for probe in PROBES for arg in ("--row", probe)]
            answer = self.cli("predict", "--model-type", model_type, *rows, "--proba")
            answers[model_type] = {k: answer[k] for k in ("prediction_set_id", "predictions", "probabilities")}
        by_name = ["--json", json.dumps(TYPED_PROBES), "--proba"]
        for name, pin in ((TYPED, []), (f"{TYPED} (pinned set {self.pinned_set})", ["--set", str(self.pinned_set)])):
            answer = self.cli("predict", "--model-type", TYPED, *pin, *by_name)
            answers[name] = {k: answer[k] for k in ("prediction_set_id", "predictions", "probabilities")}
        return answers

    def record_phase(self, name: str, seconds: float, log_before: int) -> None:
        log = self.server.log()[log_before:]
        loads = [
            {"model_type": m[0], "set": int(m[1]), "path": m[2], "load_seconds": float(m[3])}
            for m in LOAD_LINE.findall(log)
        ]
        predictions = self.predictions()
        runtimes = {m["model_type"]: m["runtime"]["answering"] for m in self.cli("models")["models"]}
        self.result.phases.append(Phase(name, seconds, loads, predictions, runtimes))

    def run(self) -> StoryResult:
        seconds = self.start("first start, empty database")
        self.cli("ingest", "--dataset", "iris", "--builtin", "iris")
        for model_type, algorithm in MODELS.items():
            self.cli("train", "--model-type", model_type, "--algorithm", algorithm, "--dataset", "iris")
        csv = self.workdir / "churn.csv"
        csv.write_text(churn_csv())
        self.cli("ingest", "--dataset", "churn", "--csv", str(csv), "--target-column", "churned")
        typed = ("train", "--model-type", TYPED, "--algorithm", "logistic_regression", "--dataset", "churn")
        self.pinned_set = self.cli(*typed)["prediction_set_id"]
        self.cli(*typed, "--param", "C=0.5")
        self.record_phase("before restart", seconds, 0)

        restarts = (
            ("after clean restart (SIGTERM)", "SIGTERM, graceful", self.server.stop),
            ("after kill -9", "SIGKILL, no cleanup at all", self.server.kill),
        )
        for name, how, stop in restarts:
            self.say(f"\n== stopping the server with {how} ==")
            stop()
            log_before = len(self.server.log())
            seconds = self.start(name)
            self.record_phase(name, seconds, log_before)
        trained_lines = self.server.log().count("trained model")
        self.result.trains_after_first_start = trained_lines - len(MODELS) - 2  # the typed model's two
        self.server.stop()
        return self.result


def run_story(workdir: Path, narrate: bool = False) -> StoryResult:
    story = Story(workdir, narrate)
    try:
        return story.run()
    finally:
        if story.server.process is not None:
            story.server.kill()  # a no-op after the story's own clean stop; never leaves a server behind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("check", "demo"), default="check")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="predserve-story-") as workdir:
        result = run_story(Path(workdir), narrate=args.mode == "demo")
    for phase in result.phases:
        ids = {t: a["prediction_set_id"] for t, a in phase.predictions.items()}
        print(
            f"{phase.name:32s} ready in {phase.seconds_to_ready:5.2f}s  sets {ids}  runtimes {phase.runtimes}  "
            f"predictions {[a['predictions'] for a in phase.predictions.values()]}"
        )
    problems = result.failures()
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(
            "OK: identical predictions from the same prediction sets across a clean restart and kill -9; no retraining"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
