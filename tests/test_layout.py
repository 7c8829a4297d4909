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


TOP_LEVEL_IMPORT = re.compile(r"^\s*(?:from|import) (server|client|protos|db)\b", re.M)


def test_everything_imports_the_code_through_the_predserve_package() -> None:
    """The folders are importable at the top of a checkout too (the working directory is on sys.path), and a
    module imported both as server.x and predserve.server.x would exist twice, with two of every global."""
    ignored = (".venv", ".git", "build", ".hypothesis")  # and bench/.venv-mlserver
    sources = [p for p in PROJECT_ROOT.rglob("*.py") if not any(part.startswith(ignored) for part in p.parts)]
    sources = [p for p in sources if "predserve" not in p.relative_to(PROJECT_ROOT).parts[:1]]  # the symlinks
    offenders = {
        str(p.relative_to(PROJECT_ROOT)): match.group(0).strip()
        for p in sources
        if (match := TOP_LEVEL_IMPORT.search(p.read_text()))
    }
    assert offenders == {}
