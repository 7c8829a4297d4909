"""Regenerates docs/model-persistence-report.md from its template, a real restart run and a real fault run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restart_story import StoryResult, run_story  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "report-template.md"
REPORT = ROOT / "docs" / "model-persistence-report.md"
FAULT_TESTS = "tests/faults"


@dataclass(frozen=True)
class FaultResult:
    test: str
    description: str
    outcome: str  # passed, failed, error or skipped
    detail: str
    seconds: float


def run_fault_tests(workdir: Path) -> list[FaultResult]:
    """Runs the fault-injection tests for real and reads each one's outcome from pytest's junit XML."""
    junit = workdir / "faults.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            FAULT_TESTS,
            "-q",
            # as make test runs them: in four processes, the tests mostly waiting on their servers
            "-n",
            "4",
            "--dist",
            "loadscope",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit1",
        ],
        cwd=ROOT,
        check=False,
    )
    if not junit.exists():
        return [FaultResult(FAULT_TESTS, "the fault tests did not run", "error", "no junit report written", 0.0)]
    results = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        descriptions = [p.get("value", "") for p in case.iter("property") if p.get("name") == "fault"]
        outcome, detail = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                detail = (element.get("message") or "").split("\n")[0][:160]
        results.append(
            FaultResult(
                test=f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name', '')}",
                description=descriptions[-1] if descriptions else case.get("name", ""),
                outcome=outcome,
                detail=detail,
                seconds=float(case.get("time", 0.0)),
            )
        )
    return results


def faults_section(results: list[FaultResult]) -> str:
    rows = ["| fault injected | result | test | time (s) |", "|---|---|---|---|"]
    for result in results:
        outcome = result.outcome + (f": {result.detail}" if result.detail else "")
        rows.append(f"| {_cell(result.description)} | {_cell(outcome)} | `{result.test}` | {result.seconds:.1f} |")
    passed = sum(r.outcome == "passed" for r in results)
    summary = f"{passed} of {len(results)} faults survived"
    skipped = [r for r in results if r.outcome == "skipped"]
    if skipped:
        summary += f" ({len(skipped)} skipped here: {'; '.join(sorted({r.detail for r in skipped}))})"
    return "\n".join(rows) + f"\n\nFault verdict: {summary}."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def migrations_section() -> str:
    parts = []
    dialects = (
        ("Both dialects", "db/migrations"),
        ("SQLite", "db/migrations/sqlite"),
        ("PostgreSQL", "db/migrations/postgresql"),
    )
    for title, directory in dialects:
        parts.append(f"#### {title}")
        for path in sorted((ROOT / directory).glob("*.sql")):
            parts.append(f"##### `{directory}/{path.name}`\n\n```sql\n{path.read_text().strip()}\n```")
    return "\n\n".join(parts)


def commands_section(result: StoryResult) -> str:
    lines = [step.command for step in result.steps]
    return (
        "```\n" + "\n".join(lines) + "\n```\n\n(Between phases the server was stopped with SIGTERM, then with SIGKILL.)"
    )


def results_section(result: StoryResult) -> str:
    rows = [
        "| phase | ready after (s) | model type | prediction_set_id | answered by | predictions | max probability |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase in result.phases:
        for model_type, answer in phase.predictions.items():
            top = [round(max(p), 6) for p in answer["probabilities"]]
            rows.append(
                f"| {phase.name} | {phase.seconds_to_ready:.2f} | {model_type} | {answer['prediction_set_id']} "
                f"| {phase.runtimes.get(model_type, '?')} | {answer['predictions']} | {top} |"
            )
    return "\n".join(rows)


def loads_section(result: StoryResult) -> str:
    rows = ["| phase | model type | set | artifact | load time (s) |", "|---|---|---|---|---|"]
    for phase in result.phases[1:]:
        for load in phase.loads:
            rows.append(
                f"| {phase.name} | {load['model_type']} | {load['set']} | `{load['path']}` "
                f"| {load['load_seconds']:.3f} |"
            )
    return "\n".join(rows)


def verdict(result: StoryResult) -> str:
    problems = result.failures()
    if problems:
        return "FAILED: " + "; ".join(problems)
    return (
        "PASSED: after a clean restart and after kill -9 the server answered with the same prediction set "
        "ids, identical labels and bit-identical probabilities, and no model was retrained."
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="predserve-report-") as workdir:
        result = run_story(Path(workdir))
        faults = run_fault_tests(Path(workdir))
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = TEMPLATE.read_text().format(
        report_date=dt.date.today().isoformat(),
        migrations=migrations_section(),
        machine=machine,
        commands=commands_section(result),
        results=results_section(result),
        loads=loads_section(result),
        verdict=verdict(result),
        faults=faults_section(faults),
    )
    REPORT.write_text(text)
    failed = [f.test for f in faults if f.outcome in ("failed", "error")]
    print(f"wrote {REPORT.relative_to(ROOT)}: {verdict(result)}; faults failed: {failed or 'none'}")
    return 1 if result.failures() or failed else 0


if __name__ == "__main__":
    sys.exit(main())
