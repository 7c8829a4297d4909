"""A bounded soak: Predict under load while Train runs repeatedly and the server is restarted.

Its length is PREDSERVE_SOAK_SECONDS (short by default; `make soak` runs it longer). Zero Predict
failures are allowed other than UNAVAILABLE inside a restart window, and every answer must come
from a set at least as new as the newest one acknowledged before the call began.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from predserve.client.library import PredserveClientError
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

pytestmark = pytest.mark.slow  # PREDSERVE_SOAK_SECONDS of load and restarts

SOAK_SECONDS = float(os.environ.get("PREDSERVE_SOAK_SECONDS", "12"))
RESTART_MARGIN = 1.0  # seconds around a restart window in which UNAVAILABLE is expected


@dataclass
class Journal:
    answers: list[tuple[float, int]] = field(default_factory=list)  # (call started, set id)
    failures: list[tuple[float, grpc.StatusCode, str]] = field(default_factory=list)
    acknowledged: list[tuple[float, int]] = field(default_factory=list)  # (ack time, set id)
    restarts: list[tuple[float, float]] = field(default_factory=list)  # (stop sent, ready again)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def in_restart_window(self, moment: float) -> bool:
        return any(start - RESTART_MARGIN <= moment <= end + RESTART_MARGIN for start, end in self.restarts)


def predict_loop(server: ServerProcess, journal: Journal, stop: threading.Event) -> None:
    with server.client(deadline_seconds=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = client.predict("iris_classifier", IRIS_PROBES)
            except PredserveClientError as exc:
                with journal.lock:
                    journal.failures.append((started, exc.code, exc.details))
                time.sleep(0.05)
                continue
            with journal.lock:
                journal.answers.append((started, answer.prediction_set_id))


def train_loop(server: ServerProcess, journal: Journal, stop: threading.Event) -> None:
    algorithms = ["logistic_regression", "random_forest", "hist_gradient_boosting"]
    round_ = 0
    while not stop.is_set():
        with server.client(train_deadline_seconds=60) as client:
            try:
                set_id = client.train(
                    "iris_classifier", dataset="iris", algorithm=algorithms[round_ % 3], params={}
                ).prediction_set_id
            except PredserveClientError:
                time.sleep(0.2)  # the server was restarting: this Train was never acknowledged
                continue
        with journal.lock:
            journal.acknowledged.append((time.monotonic(), set_id))
        round_ += 1


def test_soak_with_trains_and_restarts(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        first = client.train("iris_classifier", dataset="iris", algorithm="logistic_regression").prediction_set_id
    journal = Journal(acknowledged=[(time.monotonic(), first)])
    stop = threading.Event()
    threads = [threading.Thread(target=predict_loop, args=(server, journal, stop)) for _ in range(3)]
    threads.append(threading.Thread(target=train_loop, args=(server, journal, stop)))
    for thread in threads:
        thread.start()

    # A fixed number of restarts spread over the soak, however long each restart takes on a busy machine.
    restarts = max(2, int(SOAK_SECONDS // 20))
    kill = False
    for _ in range(restarts):
        time.sleep(SOAK_SECONDS / (restarts + 1))
        stopped = time.monotonic()
        server.kill() if kill else server.stop()
        server.start()
        journal.restarts.append((stopped, time.monotonic()))
        kill = not kill
    time.sleep(SOAK_SECONDS / (restarts + 1))
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    server.kill()

    print(
        f"\nsoak {SOAK_SECONDS:.0f}s: {len(journal.answers)} Predict answers, {len(journal.acknowledged) - 1} Trains "
        f"acknowledged, {len(journal.restarts)} restarts (SIGTERM and kill -9 alternating), "
        f"{len(journal.failures)} Predict failures, all UNAVAILABLE inside a restart window"
        if all(code is grpc.StatusCode.UNAVAILABLE for _, code, _ in journal.failures)
        else ""
    )
    unexpected = [
        f"{code.name}: {details}"
        for moment, code, details in journal.failures
        if not (code is grpc.StatusCode.UNAVAILABLE and journal.in_restart_window(moment))
    ]
    assert unexpected == []
    assert len(journal.restarts) >= 2 and len(journal.acknowledged) >= 3 and len(journal.answers) > 50

    with sqlite3.connect(server.db) as conn:
        recorded = {row[0] for row in conn.execute("SELECT id FROM prediction_sets")}
        current = conn.execute("SELECT id FROM prediction_sets WHERE is_current").fetchall()
    assert {set_id for _, set_id in journal.acknowledged} <= recorded
    assert current == [(max(recorded),)]
    for started, set_id in journal.answers:
        assert set_id in recorded
        newest_acknowledged = max(s for t, s in journal.acknowledged if t <= started)
        assert set_id >= newest_acknowledged, f"set {set_id} answered after set {newest_acknowledged} was acknowledged"
