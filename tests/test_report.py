"""The report's first page follows the exact format, and its generated sections are not hand-edited."""

from __future__ import annotations

import datetime as dt
import re

from tests.support import PROJECT_ROOT

REPORT = PROJECT_ROOT / "docs" / "model-persistence-report.md"


def test_first_lines_are_exactly_the_required_header() -> None:
    lines = REPORT.read_text().splitlines()
    assert lines[0] == "Title: Model Persistence Implementation Report (Phase 5)"
    date = re.fullmatch(r"Report Date: (\d{4}-\d{2}-\d{2})", lines[1])
    assert date is not None
    dt.date.fromisoformat(date.group(1))
    assert lines[2] == (
        "Analysis Scope: Implementation of model persistence to disk and automated loading on application startup."
    )
    assert (
        lines[3] == "System Status: Stabilized - Model volatility resolved. System is now fault-tolerant to restarts."
    )
    assert lines[4] == "Analyst: predserve engineering"


def test_report_embeds_every_migration_as_it_is_on_disk() -> None:
    text = REPORT.read_text()
    migrations = PROJECT_ROOT / "db" / "migrations"
    for path in sorted(migrations.rglob("*.sql")):
        assert path.read_text().strip() in text, f"{path.name} changed since the report was generated: make report"
    assert "Verdict: PASSED" in text


def test_report_lists_every_fault_test_and_no_failure() -> None:
    text = REPORT.read_text()
    section = text[text.index("## 6. Faults survived") :]
    for path in sorted((PROJECT_ROOT / "tests" / "faults").glob("test_*.py")):
        for name in re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M):
            assert f"::{name}" in section, f"{path.name}::{name} is not in the report: make report"
    assert "| failed" not in section and "| error" not in section
    assert re.search(r"Fault verdict: (\d+) of \1 faults survived", section) or "skipped here" in section
