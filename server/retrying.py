"""Waiting for the registry database where a process must not go on without it: start-up (server/app.py) and a
serving process's first sync before it binds its port (server/services/reload.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.1
# The longest wait between two attempts: once the database answers, the process goes on within this.
MAX_DELAY_SECONDS = 0.5
REPORT_EVERY_SECONDS = 10.0


def until_it_works(
    attempt: Callable[[], T],
    retry_on: tuple[type[BaseException], ...],
    stop: threading.Event,
    report: Callable[[BaseException, float], None],
) -> T | None:
    """attempt() until it returns, again after each of the `retry_on` errors with a backoff from
    FIRST_DELAY_SECONDS to MAX_DELAY_SECONDS; None once `stop` is set. `report(error, seconds waited)` is called
    for the first failure and then every REPORT_EVERY_SECONDS. Any other error propagates."""
    delay, started, reported = FIRST_DELAY_SECONDS, time.monotonic(), -REPORT_EVERY_SECONDS
    while True:
        try:
            return attempt()
        except retry_on as exc:
            waited = time.monotonic() - started
            if waited - reported >= REPORT_EVERY_SECONDS:
                report(exc, waited)
                reported = waited
        if stop.wait(delay):
            return None
        delay = min(delay * 2, MAX_DELAY_SECONDS)
