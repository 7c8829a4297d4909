"""Waiting for something a real process will do: the one polling loop of the tests, scripts and benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None | Literal[False]], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Calls `condition` every `interval` seconds until it returns something true, and returns that.

    Raises TimeoutError naming `what` (phrased to follow "waiting for") once `timeout` seconds pass. An exception
    from `condition` is not caught: it ends the wait at once, which is how a condition reports a process that
    died and will never satisfy it.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(min(interval, remaining))
