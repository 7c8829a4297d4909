"""Fixtures of the fault tests.

Every fault test's docstring says, in its first line, which fault it injects; that line is recorded as
the junit property `fault`, which `make report` renders in the "Faults survived" section.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.faults.baseline import Launch
from tests.support import ServerProcess


@pytest.fixture(autouse=True)
def _record_fault(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> None:
    doc = (getattr(request.function, "__doc__", None) or "").strip().splitlines()
    record_property("fault", doc[0].rstrip(".") if doc else request.node.name)


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Builds ServerProcess objects (not started) and kills whatever is left of them after the test,
    so a failing assertion never leaves a server running."""
    made: list[ServerProcess] = []

    def make(*args: Any, **kwargs: Any) -> ServerProcess:
        made.append(ServerProcess(*args, **kwargs))
        return made[-1]

    yield make
    for server in made:
        if server.process is not None:
            server.kill()
