"""Micro-batching: concurrent predict calls for the same pipeline answered by one call of that pipeline.

A call that finds its pipeline idle runs at once; calls that arrive while it runs queue up, and the first
of them then runs everything queued (up to max_rows) as one matrix. Under load a 100-tree forest, whose
predict costs about the same for 1 or 200 rows, so answers many calls for the price of one.

The wait is adaptive. A batch that starts right after one of N calls expects those N callers back within a
round trip, so it waits for them, at most max_wait; without it, N closed-loop callers fall into batches of
N-1 and 1 in turn, the lone call paying a whole predict. A caller alone (or after a quiet spell) never waits.

Only pipelines whose answer for a row cannot depend on the other rows of the matrix are batched: the steps
must all be of a type listed in BATCH_INVARIANT_STEPS (element-wise scaling, trees and tree ensembles,
whose per-row sums run in a fixed order). A linear model is not: numpy multiplies a one-row matrix with
gemv and a taller one with gemm, and the two round differently in the last bit, so batching would change
its probabilities. tests/test_batching.py checks every recipe of the catalog both ways.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor

from predserve.server.observability.telemetry import Telemetry

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 256
DEFAULT_MAX_WAIT_SECONDS = 0.002
# A lane idle for longer than this many max_waits has forgotten its last batch: the next call runs at once.
_MEMORY_WAITS = 10

# Exact types only: a subclass may compute anything.
BATCH_INVARIANT_STEPS: frozenset[type] = frozenset(
    {
        StandardScaler,
        DecisionTreeClassifier,
        DecisionTreeRegressor,
        ExtraTreeClassifier,
        ExtraTreeRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    }
)

# (labels, probabilities or None) for a feature matrix.
Answer = tuple[np.ndarray, np.ndarray | None]
Compute = Callable[[Any, np.ndarray, bool], Answer]


def batch_invariant(pipeline: Any) -> bool:
    """Whether every row's answer is the same whatever other rows share the matrix."""
    steps = [step for _, step in pipeline.steps] if type(pipeline) is Pipeline else [pipeline]
    return all(type(step) in BATCH_INVARIANT_STEPS for step in steps if step not in (None, "passthrough"))


@dataclass(eq=False)
class _Call:
    features: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    error: BaseException | None = None
    # Set instead of an answer: the caller is to run the next batch itself.
    lead: bool = False

    def result(self) -> Answer:
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer


@dataclass(eq=False)
class _Lane:
    """The queue of one pipeline, for one kind of answer (with or without probabilities) and input dtype."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: deque[_Call] = field(default_factory=deque)
    running: bool = False
    # How many calls the next batch may expect, and when the last one ended (time.monotonic()).
    expected: int = 1
    finished_at: float = 0.0

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)


class MicroBatcher:
    def __init__(
        self,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_wait: float = DEFAULT_MAX_WAIT_SECONDS,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.max_rows = max_rows
        self.max_wait = max_wait
        # Keyed by the pipeline object itself: a pipeline swapped out by a Train takes its lanes with it.
        self._lanes: weakref.WeakKeyDictionary[Any, dict[tuple[bool, str], _Lane]] = weakref.WeakKeyDictionary()
        self._invariant: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.telemetry = telemetry or Telemetry()

    @property
    def enabled(self) -> bool:
        return self.max_rows > 0

    def run(self, pipeline: Any, features: np.ndarray, probabilities: bool, compute: Compute) -> Answer:
        """compute(pipeline, features, probabilities), possibly as part of a larger matrix."""
        # Matrices of one dtype only: concatenating float32 with float64 rows would change what a scaler computes.
        lane = self._lane(pipeline, (probabilities, features.dtype.str)) if self.enabled else None
        if lane is None:
            return compute(pipeline, features, probabilities)
        call = _Call(features)
        with lane.lock:
            lane.waiting.append(call)
            leading = not lane.running
            lane.running = True
            lane.arrived.notify()
        if not leading:
            call.done.wait()
            if not call.lead:
                return call.result()
        return self._lead(lane, call, pipeline, probabilities, compute)

    def _lane(self, pipeline: Any, key: tuple[bool, str]) -> _Lane | None:
        with self._lock:
            invariant = self._invariant.get(pipeline)
            if invariant is None:
                invariant = self._invariant[pipeline] = batch_invariant(pipeline)
            if not invariant:
                return None
            return self._lanes.setdefault(pipeline, {}).setdefault(key, _Lane())

    def _lead(self, lane: _Lane, own: _Call, pipeline: Any, probabilities: bool, compute: Compute) -> Answer:
        with lane.lock:
            self._await_expected(lane)
            batch = [lane.waiting.popleft()]  # own call: it is at the head of the queue
            rows = len(own.features)
            while lane.waiting and rows + len(lane.waiting[0].features) <= self.max_rows:
                rows += len(lane.waiting[0].features)
                batch.append(lane.waiting.popleft())
        self.telemetry.batch_answered(len(batch))
        try:
            _answer(batch, pipeline, probabilities, compute)
        finally:
            with lane.lock:
                lane.expected = len(batch) + len(lane.waiting)
                lane.finished_at = time.monotonic()
                if lane.waiting:
                    successor = lane.waiting[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    lane.running = False
            for call in batch[1:]:
                call.done.set()
        return own.result()

    def _await_expected(self, lane: _Lane) -> None:
        """With lane.lock held: wait, at most max_wait, for the callers the last batch answered to come back."""
        now = time.monotonic()
        if now - lane.finished_at > _MEMORY_WAITS * self.max_wait:
            lane.expected = 1
        deadline = now + self.max_wait
        while len(lane.waiting) < lane.expected and self._queued_rows(lane) < self.max_rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            lane.arrived.wait(remaining)

    @staticmethod
    def _queued_rows(lane: _Lane) -> int:
        return sum(len(call.features) for call in lane.waiting)


def _answer(batch: list[_Call], pipeline: Any, probabilities: bool, compute: Compute) -> None:
    if len(batch) == 1:
        _answer_alone(batch[0], pipeline, probabilities, compute)
        return
    try:
        labels, proba = compute(pipeline, np.concatenate([call.features for call in batch]), probabilities)
    except Exception:
        # One call's trouble must stay that call's: answer each alone, each with its own error.
        logger.debug("batch of %d calls failed; answering them one by one", len(batch), exc_info=True)
        for call in batch:
            _answer_alone(call, pipeline, probabilities, compute)
        return
    start = 0
    for call in batch:
        end = start + len(call.features)
        call.answer = (labels[start:end], None if proba is None else proba[start:end])
        start = end


def _answer_alone(call: _Call, pipeline: Any, probabilities: bool, compute: Compute) -> None:
    try:
        call.answer = compute(pipeline, call.features, probabilities)
    except BaseException as exc:
        call.error = exc
