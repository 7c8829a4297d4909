"""Concurrent Trains, Predicts during swaps, deadlines and graceful shutdown, on a real server process."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from predserve.client.library import PredserveClientError
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

SLOW_PARAMS = {"n_estimators": 400, "max_features": None}


def slow_rows(n: int = 3000, width: int = 20) -> list[tuple[list[float], int]]:
    """A dataset on which a 400-tree forest takes seconds to fit."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, width))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    return [(row.tolist(), int(label)) for row, label in zip(x, y, strict=True)]


def current_rows(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT model_type, id FROM prediction_sets WHERE is_current ORDER BY model_type"
        ).fetchall()


def set_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM prediction_sets").fetchone()[0])


@pytest.fixture
def prepared(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with iris trained once and a slow dataset ingested."""
    server = ServerProcess(tmp_path, extra_args=["--grace-seconds", "60"]).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        client.ingest("slow", slow_rows())
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    yield server
    server.kill()


def test_two_trains_of_one_model_type_at_once_leave_the_last_committed_current(prepared: ServerProcess) -> None:
    results: list[int] = []
    errors: list[Exception] = []

    def train(algorithm: str) -> None:
        try:
            with prepared.client() as client:
                results.append(client.train("iris_classifier", dataset="iris", algorithm=algorithm).prediction_set_id)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(a,)) for a in ("random_forest", "hist_gradient_boosting")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 2
    assert current_rows(prepared.db) == [("iris_classifier", max(results))]
    with prepared.client() as client:
        assert client.predict("iris_classifier", IRIS_PROBES).prediction_set_id == max(results)


def test_predict_never_fails_while_trains_swap_models(prepared: ServerProcess) -> None:
    stop = threading.Event()
    seen: dict[int, list[int]] = {}
    failures: list[str] = []

    def predict_forever(worker: int) -> None:
        seen[worker] = []
        with prepared.client() as client:
            while not stop.is_set():
                try:
                    answer = client.predict("iris_classifier", IRIS_PROBES, include_probabilities=True)
                except PredserveClientError as exc:
                    failures.append(str(exc))
                    continue
                assert len(answer.predictions) == len(IRIS_PROBES)
                seen[worker].append(answer.prediction_set_id)

    workers = [threading.Thread(target=predict_forever, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    trained = []
    with prepared.client() as client:
        for algorithm in ("random_forest", "logistic_regression", "hist_gradient_boosting", "random_forest"):
            trained.append(client.train("iris_classifier", dataset="iris", algorithm=algorithm).prediction_set_id)
    time.sleep(0.3)
    stop.set()
    for worker in workers:
        worker.join()

    assert failures == []
    for ids in seen.values():
        assert ids, "a worker got no answer at all"
        assert ids == sorted(ids), "a worker saw an older model after a newer one"
        assert set(ids) <= {1, *trained}
    assert any(trained[-1] in ids for ids in seen.values())


@pytest.mark.slow  # waits for the abandoned 400-tree fit to end
def test_a_train_past_its_deadline_records_nothing(prepared: ServerProcess) -> None:
    before = set_count(prepared.db)
    with prepared.client(train_deadline_seconds=0.5) as client:
        with pytest.raises(PredserveClientError) as error:
            client.train("slow_forest", dataset="slow", algorithm="random_forest", params=SLOW_PARAMS)
    assert error.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    prepared.wait_for_log("WARNING predserve.server.services.training: Train of slow_forest abandoned", timeout=60)
    assert "Traceback" not in prepared.log()
    assert set_count(prepared.db) == before
    assert not [p for p in prepared.models_dir.iterdir() if p.name.startswith("slow_forest")]
    with prepared.client() as client:
        assert client.predict("iris_classifier", IRIS_PROBES).predictions


@pytest.mark.slow  # a whole 400-tree fit, then a restart
def test_sigterm_lets_an_in_flight_train_finish_and_refuses_new_calls(prepared: ServerProcess) -> None:
    outcome: dict[str, object] = {}

    def train() -> None:
        with prepared.client() as client:
            try:
                outcome["set"] = client.train(
                    "slow_forest", dataset="slow", algorithm="random_forest", params=SLOW_PARAMS
                ).prediction_set_id
            except PredserveClientError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    time.sleep(1.0)  # the fit is under way
    prepared.process.send_signal(15)  # type: ignore[union-attr]
    prepared.wait_for_log("stopping: refusing new calls", timeout=60)
    with prepared.client(max_attempts=1) as client, pytest.raises(PredserveClientError) as refused:
        client.predict("iris_classifier", IRIS_PROBES)
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    thread.join()
    assert prepared.wait_exit() == 0
    assert "error" not in outcome, outcome
    assert ("slow_forest", outcome["set"]) in current_rows(prepared.db)

    prepared.start()
    with prepared.client() as client:
        assert client.predict("slow_forest", [[0.0] * 20]).prediction_set_id == outcome["set"]


def test_a_train_cut_off_by_the_grace_period_leaves_no_row_and_no_file(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=["--grace-seconds", "0.5"]).start()
    with server.client() as client:
        client.ingest("slow", slow_rows())
        first = client.train("quick", dataset="slow", algorithm="logistic_regression").prediction_set_id
    errors: list[PredserveClientError] = []

    def train() -> None:
        with server.client() as client:
            try:
                client.train("quick", dataset="slow", algorithm="random_forest", params=SLOW_PARAMS)
            except PredserveClientError as exc:
                errors.append(exc)

    thread = threading.Thread(target=train)
    thread.start()
    time.sleep(1.0)
    started = time.monotonic()
    server.process.send_signal(15)  # type: ignore[union-attr]
    assert server.wait_exit() == 0
    assert time.monotonic() - started < 5, "the server waited for the fit instead of the grace period"
    thread.join()
    assert errors and errors[0].code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert current_rows(server.db) == [("quick", first)]
    assert set_count(server.db) == 1
    on_disk = [p.name for p in server.models_dir.iterdir()]
    # The first set's artifact and its compiled form (server/runtimes/), nothing of the cut-off Train.
    assert len([name for name in on_disk if name.endswith(".joblib")]) == 1 and len(on_disk) == 2, on_disk
