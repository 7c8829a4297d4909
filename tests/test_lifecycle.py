"""Model lifecycle over real processes: promotion policies, promote and roll back, import, retention,
live reload across servers sharing one database, and --workers."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import joblib
import pytest

from harness.waiting import wait_until
from predserve.client.library import PredserveClient, PredserveClientError, target_value
from tests.support import IRIS_PROBES, PROJECT_ROOT, ServerProcess, iris_rows

WEAK = {"n_estimators": 1, "max_depth": 1}


@pytest.fixture
def iris_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path, extra_args=["--import-timeout", "30", "--reload-interval", "0.2"]).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
    yield server
    server.kill()


def current_id(client: PredserveClient, model_type: str = "iris_classifier") -> int:
    return client.predict(model_type, IRIS_PROBES).prediction_set_id


def test_register_only_and_promote_if_better(iris_server: ServerProcess) -> None:
    with iris_server.client() as client:
        first = client.train("iris_classifier", "iris", "logistic_regression")
        assert first.promoted and "always" in first.promotion_reason

        registered = client.train("iris_classifier", "iris", "random_forest", promotion="register-only")
        assert not registered.promoted and "without promotion" in registered.promotion_reason
        assert current_id(client) == first.prediction_set_id

        worse = client.train("iris_classifier", "iris", "random_forest", WEAK, promotion="if-better")
        assert not worse.promoted
        assert worse.promotion_reason.startswith("not promoted: accuracy")
        assert f"of current set {first.prediction_set_id}" in worse.promotion_reason
        assert current_id(client) == first.prediction_set_id

        same = client.train("iris_classifier", "iris", "logistic_regression", promotion="if-better")
        assert same.promoted and ">=" in same.promotion_reason
        assert current_id(client) == same.prediction_set_id


def test_promote_and_rollback_swap_without_restart(iris_server: ServerProcess) -> None:
    with iris_server.client() as client:
        first = client.train("iris_classifier", "iris", "logistic_regression").prediction_set_id
        second = client.train("iris_classifier", "iris", "random_forest", WEAK).prediction_set_id
        assert current_id(client) == second

        promoted = client.promote(first)
        assert (promoted.prediction_set_id, promoted.previous_set_id) == (first, second)
        assert current_id(client) == first

        rolled_back = client.rollback("iris_classifier")
        assert (rolled_back.prediction_set_id, rolled_back.previous_set_id) == (second, first)
        assert current_id(client) == second
        sets = client.list_prediction_sets("iris_classifier").prediction_sets
    assert [(s.id, s.is_current) for s in sets] == [(second, True), (first, False)]
    assert "promote: model type=iris_classifier set=1 is now current" in iris_server.log()


def test_promoting_an_unverifiable_set_is_refused_and_changes_nothing(iris_server: ServerProcess) -> None:
    with iris_server.client() as client:
        first = client.train("iris_classifier", "iris", "logistic_regression")
        second = client.train("iris_classifier", "iris", "random_forest", WEAK).prediction_set_id
        (iris_server.models_dir / first.model_artifact_path).write_bytes(b"tampered")
        with pytest.raises(PredserveClientError) as refused:
            client.promote(first.prediction_set_id)
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert f"artifact {first.model_artifact_path}" in refused.value.details
        assert current_id(client) == second
        with pytest.raises(PredserveClientError) as missing:
            client.promote(999)
        assert missing.value.code is grpc.StatusCode.NOT_FOUND
        with pytest.raises(PredserveClientError) as already:
            client.promote(second)
        assert already.value.code is grpc.StatusCode.FAILED_PRECONDITION and "already current" in already.value.details
        with pytest.raises(PredserveClientError) as nothing_before:
            client.rollback("never_trained")
        assert nothing_before.value.code is grpc.StatusCode.NOT_FOUND
    with sqlite3.connect(iris_server.db) as conn:
        assert conn.execute("SELECT id FROM prediction_sets WHERE is_current").fetchall() == [(second,)]


def test_retention_archives_old_artifacts_and_keeps_current_and_fallback(iris_server: ServerProcess) -> None:
    with iris_server.client() as client:
        ids = [client.train("iris_classifier", "iris", "logistic_regression", {"C": c}) for c in (1, 2, 3, 4, 5)]
        client.promote(ids[2].prediction_set_id)  # current: the middle one
        dry = client.garbage_collect(keep=1, dry_run=True)
        # Non-current, newest first: 5, 4, 2, 1. Keep 1 (set 5); set 2 is the fallback (newest older than 3).
        assert [s.id for s in dry.collected] == [ids[3].prediction_set_id, ids[0].prediction_set_id]
        assert dry.dry_run and dry.bytes_freed == sum(s.artifact_size_bytes for s in dry.collected)
        assert all((iris_server.models_dir / s.model_artifact_path).exists() for s in dry.collected)

        done = client.garbage_collect(keep=1)
        assert [s.id for s in done.collected] == [s.id for s in dry.collected]
        assert not any((iris_server.models_dir / s.model_artifact_path).exists() for s in done.collected)
        sets = {s.id: s for s in client.list_prediction_sets("iris_classifier").prediction_sets}
        assert len(sets) == 5  # rows are history and stay
        assert {i for i, s in sets.items() if s.archived_at} == {s.id for s in done.collected}
        with pytest.raises(PredserveClientError) as archived:
            client.predict("iris_classifier", IRIS_PROBES, prediction_set_id=ids[0].prediction_set_id)
        assert archived.value.code is grpc.StatusCode.FAILED_PRECONDITION and "archived" in archived.value.details
        assert client.garbage_collect(keep=1).collected == []
        with pytest.raises(PredserveClientError) as bad_keep:
            client.garbage_collect(keep=0)
        assert bad_keep.value.code is grpc.StatusCode.INVALID_ARGUMENT


class _ExitsWhenLoaded:
    def __reduce__(self):  # noqa: ANN204
        return (os._exit, (3,))


class _HangsWhenLoaded:
    def __reduce__(self):  # noqa: ANN204
        return (time.sleep, (60,))


def test_import_registers_an_outside_pipeline_after_probing_it(iris_server: ServerProcess, tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import GradientBoostingClassifier

    bunch = load_iris()
    outside = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(bunch.data, bunch.target)
    artifact = tmp_path / "outside.joblib"
    joblib.dump(outside, artifact)

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "predserve.client",
            "--target",
            iris_server.target,
            "--json",
            "import",
            "--model-type",
            "iris_gb",
            "--artifact",
            str(artifact),
            "--dataset",
            "iris",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    with iris_server.client() as client:
        answer = client.predict("iris_gb", IRIS_PROBES)
        assert [target_value(p.value) for p in answer.predictions] == outside.predict(IRIS_PROBES).tolist()
        (record,) = client.list_prediction_sets("iris_gb").prediction_sets
        assert record.origin == "imported" and record.algorithm == "imported:GradientBoostingClassifier"
        assert record.metrics["accuracy"] > 0.9 and record.is_current
        assert (iris_server.models_dir / record.model_artifact_path).read_bytes() == artifact.read_bytes()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (pickle.dumps({"not": "a model"}), "has no predict()"),
        (b"\x80\x04 this is not a pickle", "loading or calling the model failed"),
        # Refused by the allow-list before anything runs; tests/faults/test_malicious_pickles.py has the
        # crash and the hang in trusted code, which only the probe process stops.
        (pickle.dumps(_ExitsWhenLoaded()), f"it names {os.name}._exit, which is not on the allow-list"),
        (pickle.dumps(_HangsWhenLoaded()), "it names time.sleep, which is not on the allow-list"),
    ],
    ids=["no predict", "garbage", "exits the process", "hangs"],
)
def test_import_refuses_what_cannot_be_served_and_keeps_serving(
    iris_server: ServerProcess, payload: bytes, message: str
) -> None:
    with iris_server.client() as client:
        trained = client.train("iris_classifier", "iris", "logistic_regression").prediction_set_id
        with pytest.raises(PredserveClientError) as refused:
            client.import_model("iris_classifier", payload)
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert message in refused.value.details
        assert current_id(client) == trained
        assert len(client.list_prediction_sets("iris_classifier").prediction_sets) == 1
    assert len(list(iris_server.models_dir.glob("*.joblib"))) == 1


def test_live_reload_keeps_two_servers_on_one_database_consistent(iris_server: ServerProcess, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = ServerProcess(
        other_dir, db=iris_server.db, models_dir=iris_server.models_dir, extra_args=["--reload-interval", "0.2"]
    ).start()
    try:
        with iris_server.client() as a, other.client() as b:
            first = a.train("iris_classifier", "iris", "logistic_regression").prediction_set_id
            # a model type the other server had never seen
            wait_until(lambda: _served(b) == first, 20, f"the other server to serve set {first}")
            second = a.train("iris_classifier", "iris", "random_forest", WEAK).prediction_set_id
            wait_until(lambda: _served(b) == second, 20, f"the other server to serve set {second}")
            b.promote(first)  # and back the other way
            wait_until(lambda: current_id(a) == first, 20, f"the first server to serve promoted set {first}")
        # the swap answers first and logs after: under load the line can trail the answer by a moment
        iris_server.wait_for_log("live reload: model type=iris_classifier now serves set=1", 20)
    finally:
        other.kill()


def _served(client: PredserveClient) -> int:
    try:
        return current_id(client)
    except PredserveClientError:
        return 0


def test_workers_share_one_port_and_follow_each_other(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=["--workers", "2", "--reload-interval", "0.2"]).start()
    try:
        names, rows = iris_rows()
        with server.client() as client:
            client.ingest("iris", rows, names)
            trained = client.train("iris_classifier", "iris", "logistic_regression").prediction_set_id

        # New connections land on either worker; every one must come to serve the new set.
        def all_workers_serve() -> bool:
            answers = set()
            for _ in range(12):
                with server.client() as fresh:
                    answers.add(_served(fresh))
            return answers == {trained}

        wait_until(all_workers_serve, 20, f"both workers to serve set {trained}")
        assert server.log().count("predserve ready on 127.0.0.1") == 3  # two workers and the parent
        second = ServerProcess(tmp_path / "second", port=server.port)
        (tmp_path / "second").mkdir()
        second.start(wait=False)
        assert second.wait_exit() != 0  # the port is taken: refused, not shared
        assert server.stop() == 0
        assert "stopping 2 worker processes" in server.log()
    finally:
        server.kill()
