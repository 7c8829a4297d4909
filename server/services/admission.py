"""Bounds on heavy work: WorkSlots for Trains and imports, refused at once when full; FitCores for the
cores one fit may use.

A Train holds a core for seconds to minutes. Refusing the one past the bound straight away, rather
than queueing it, keeps the server's threads and cores for Predict and health, and tells the caller
at once to try later, as Triton and TF Serving do with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from threadpoolctl import threadpool_limits

from predserve.server.errors import ResourceExhausted


class WorkSlots:
    def __init__(self, limit: int, what: str, option: str) -> None:
        self._free = threading.BoundedSemaphore(limit)
        self._limit = limit
        self._what = what
        self._option = option

    @contextmanager
    def taken(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise ResourceExhausted(
                f"{self._limit} {self._what} already running, the limit ({self._option}); try again later"
            )
        try:
            yield
        finally:
            self._free.release()


class FitCores:
    """The cores one fit may use: a recipe's n_jobs is capped to it, and so are the BLAS and OpenMP pools
    (threadpoolctl) while any fit runs, so that fits leave cores to Predict.

    threadpoolctl's limits are process-wide: the first fit to start sets them and the last to end restores
    them, so that overlapping fits never leave the pools limited, or unlimited, by mistake.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self._lock = threading.Lock()
        self._running = 0
        self._limits: Any = None

    def cap(self, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters with n_jobs at most `jobs`. Left out, n_jobs stays out: scikit-learn then runs one
        job; None and negative counts given explicitly mean "every core" and get the cap."""
        if "n_jobs" not in params:
            return params
        asked = params["n_jobs"]
        if isinstance(asked, int) and 1 <= asked <= self.jobs:
            return params
        return {**params, "n_jobs": self.jobs}

    @contextmanager
    def limited(self) -> Iterator[None]:
        with self._lock:
            if self._running == 0:
                self._limits = threadpool_limits(limits=self.jobs)
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._limits.restore_original_limits()
                    self._limits = None
