"""Every fault test's docstring says, in its first line, which fault it injects; that line is recorded as
the junit property `fault`, which `make report` renders in the "Faults survived" section."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture(autouse=True)
def _record_fault(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> None:
    doc = (getattr(request.function, "__doc__", None) or "").strip().splitlines()
    record_property("fault", doc[0] if doc else request.node.name)
