"""The typed walkthrough of docs/tables.md is what a run prints: scripts/typed_walkthrough.py runs its commands
against a fresh server, and the transcript must equal the page's, up to an artifact's time stamp and random suffix."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

import pytest

from tests.support import PROJECT_ROOT


def walkthrough() -> ModuleType:
    path = PROJECT_ROOT / "scripts" / "typed_walkthrough.py"
    spec = importlib.util.spec_from_file_location("typed_walkthrough", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_readme_shows_what_the_walkthrough_prints() -> None:
    script = walkthrough()
    shown = script.readme_transcript(script.DOC.read_text())
    assert shown is not None, "docs/tables.md has lost its walkthrough markers"
    run = script.transcript()
    assert script.normalised(run) == script.normalised(shown), "docs/tables.md is stale: run `make walkthrough`"
    # The story it tells: a typed dataset, a compiled typed set, a missing value and an unseen country answered.
    assert "plan: string (20 missing)" in run
    assert "table-numpy-linear" in run
    assert "c9004,52,75.0,team,jp,0," in run


def test_a_changed_transcript_is_caught() -> None:
    script = walkthrough()
    shown = script.readme_transcript(script.DOC.read_text())
    assert shown is not None
    edited = shown.replace("ingested 400 rows", "ingested 401 rows")
    assert script.normalised(edited) != script.normalised(shown)
    another_run = re.sub(r"T\d{6}Z-[0-9a-f]{12}", "T000000Z-000000000000", shown)
    assert another_run != shown and script.normalised(another_run) == script.normalised(shown)
