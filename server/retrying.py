"""Waiting for the registry database where a process must not go on without it: start-up (server/app.py) and a
serving process's first sync before it binds its port (server/services/reload.py)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from predserve.server.errors import DatabaseUnreachable, Unavailable

T = TypeVar("T")
logger = logging.getLogger(__name__)

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


def until_the_registry_answers(attempt: Callable[[], T]) -> T | None:
    """attempt(), tried again while the registry database cannot be reached (a PostgreSQL down, frozen,
    restarting or not provisioned yet), logging why every REPORT_EVERY_SECONDS; None once SIGTERM or SIGINT
    came. Under Kubernetes the startupProbe says how long a replica may wait (deploy/kubernetes/deployment.yaml).
    """
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}

    def report(exc: BaseException, waited: float) -> None:
        logger.warning(
            "waiting for the registry database before listening (%.0fs so far): %s",
            waited,
            exc,
            extra={"event": "database_wait", "waited_s": round(waited, 1)},
        )

    try:
        result = until_it_works(attempt, (DatabaseUnreachable, Unavailable), stop, report)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if result is None:
        logger.info("stopped while waiting for the registry database", extra={"event": "stopped"})
    return result
