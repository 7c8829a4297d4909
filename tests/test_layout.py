"""Structure the redesign promised (issue 11): no module of server/ grows past 450 lines, and all SQL stays
in server/storage/."""

from __future__ import annotations

import re

from tests.support import PROJECT_ROOT

MAX_LINES = 450
SQL = re.compile(r"\b(SELECT\s+\S+.*\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b")


def server_modules() -> list:
    return sorted((PROJECT_ROOT / "server").rglob("*.py"))


def test_no_server_module_is_over_the_limit() -> None:
    long = {
        str(p.relative_to(PROJECT_ROOT)): n
        for p in server_modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_sql_lives_in_the_storage_package_only() -> None:
    outside = [
        str(path.relative_to(PROJECT_ROOT))
        for path in server_modules()
        if "storage" not in path.parts and SQL.search(path.read_text())
    ]
    assert outside == []
