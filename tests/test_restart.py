"""Trained models survive restarts: clean stop, kill -9, and an upgrade from a Phase-4 database."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from predserve.client.library import target_value
from tests.support import IRIS_PROBES, ServerProcess, iris_rows
from tests.test_migrations import phase4_database

Reap = Callable[[ServerProcess], ServerProcess]


def answers(server: ServerProcess, model_type: str) -> tuple[int, list, list]:
    with server.client() as client:
        response = client.predict(model_type, IRIS_PROBES, include_probabilities=True)
    return (
        response.prediction_set_id,
        [target_value(p.value) for p in response.predictions],
        [list(p.probabilities) for p in response.predictions],
    )


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_predictions_survive_a_restart_without_retraining(tmp_path: Path, how: str, reap: Reap) -> None:
    server = reap(ServerProcess(tmp_path)).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
        client.train("iris_forest", dataset="iris", algorithm="random_forest", params={"n_estimators": 30})
    before = {t: answers(server, t) for t in ("iris_classifier", "iris_forest")}
    artifacts_before = sorted(p.name for p in server.models_dir.iterdir())

    if how == "sigterm":
        assert server.stop() == 0
    else:
        server.kill()
    server.start()

    after = {t: answers(server, t) for t in ("iris_classifier", "iris_forest")}
    assert after == before  # same prediction_set_id, labels and probabilities, bit for bit
    assert sorted(p.name for p in server.models_dir.iterdir()) == artifacts_before  # nothing retrained
    log = server.log()
    assert log.count("loaded model type=iris_classifier") == 1
    assert log.count("trained model") == 2  # the two Trains before the restart, none after
    server.kill()


def test_artifact_paths_still_resolve_after_the_project_moves(tmp_path: Path, reap: Reap) -> None:
    home = tmp_path / "before"
    home.mkdir()
    server = reap(ServerProcess(home)).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    before = answers(server, "iris_classifier")
    server.stop()

    moved = tmp_path / "after"
    home.rename(moved)
    server = reap(ServerProcess(moved)).start()
    assert answers(server, "iris_classifier") == before
    server.kill()


def test_phase4_database_is_served_after_upgrade(tmp_path: Path, reap: Reap) -> None:
    db = tmp_path / "phase4.db"
    phase4_database(db)
    server = reap(ServerProcess(tmp_path, db=db)).start()
    with server.client() as client:
        models = {m.model_type: m for m in client.list_models().models}
        assert set(models) == {"churn", "price"}
        assert not models["churn"].loaded and "needs training" in models["churn"].status_message
        assert client.health("predserve.model.churn") == "NOT_SERVING"
        # History from Phase 4 is trainable as it is.
        client.ingest("legacy", [([float(i), float(i * 2)], i % 2) for i in range(20)])
        trained = client.train("churn", dataset="legacy", algorithm="logistic_regression")
        assert client.predict("churn", [[1.0, 2.0]]).prediction_set_id == trained.prediction_set_id
        assert client.health("predserve.model.churn") == "SERVING"
    server.kill()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM prediction_sets").fetchone() == (5,)
        assert conn.execute("SELECT COUNT(*) FROM data_history").fetchone() == (23,)
