"""Regenerates docs/model-persistence-report.md from its template and a real restart run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restart_story import StoryResult, run_story  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "report-template.md"
REPORT = ROOT / "docs" / "model-persistence-report.md"


def migrations_section() -> str:
    parts = []
    for title, directory in (("SQLite", "db/migrations"), ("PostgreSQL", "db/migrations/postgresql")):
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
        "| phase | ready after (s) | model type | prediction_set_id | predictions | max probability |",
        "|---|---|---|---|---|---|",
    ]
    for phase in result.phases:
        for model_type, answer in phase.predictions.items():
            top = [round(max(p), 6) for p in answer["probabilities"]]
            rows.append(
                f"| {phase.name} | {phase.seconds_to_ready:.2f} | {model_type} | {answer['prediction_set_id']} "
                f"| {answer['predictions']} | {top} |"
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
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = TEMPLATE.read_text().format(
        report_date=dt.date.today().isoformat(),
        migrations=migrations_section(),
        machine=machine,
        commands=commands_section(result),
        results=results_section(result),
        loads=loads_section(result),
        verdict=verdict(result),
    )
    REPORT.write_text(text)
    print(f"wrote {REPORT.relative_to(ROOT)}: {verdict(result)}")
    return 1 if result.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
