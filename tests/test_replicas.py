"""Several real replicas sharing one PostgreSQL registry and one artifact directory.

Every replica polls only every 60 s here, so a replica that follows a change within seconds was told by
NOTIFY. Train on one, predict on the others; kill one mid-Train; restart them all; train one model type
on two replicas at once; stop one while a client spreads Predicts over all of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from harness.waiting import wait_until
from predserve.client.library import PredserveClient, PredserveClientError
from predserve.server.failpoints import AFTER_COMMIT, DURING_FIT
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

pytestmark = pytest.mark.slow  # three replicas, one with two workers, restarted and killed

FOLLOW_SECONDS = 10.0  # well under the 60 s poll: only a notification explains following this fast


class Replicas:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.models_dir = root / "shared-artifacts"  # what an NFS or ReadWriteMany mount is to real replicas
        self.started: list[ServerProcess] = []

    def start(self, name: str, env: dict[str, str] | None = None, workers: int = 1) -> ServerProcess:
        workdir = self.root / name
        workdir.mkdir(exist_ok=True)
        args = ["--reload-interval", "60", "--workers", str(workers)]
        replica = ServerProcess(workdir, db=self.url, models_dir=self.models_dir, extra_args=args, env=env)
        self.started.append(replica)
        return replica.start()

    def current(self) -> list[tuple[str, int]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute("SELECT model_type, id FROM prediction_sets WHERE is_current ORDER BY 1").fetchall()

    def set_ids(self) -> list[int]:
        with psycopg.connect(self.url) as conn:
            return [row[0] for row in conn.execute("SELECT id FROM prediction_sets ORDER BY id")]


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[Replicas]:
    group = Replicas(tmp_path, postgres_url)
    yield group
    for replica in group.started:
        replica.kill()


def served(replica: ServerProcess, model_type: str = "iris_classifier") -> int:
    try:
        with replica.client(max_attempts=1) as client:
            return client.predict(model_type, IRIS_PROBES).prediction_set_id
    except PredserveClientError:
        return 0


def ingest_iris(replica: ServerProcess) -> None:
    names, rows = iris_rows()
    with replica.client() as client:
        client.ingest("iris", rows, names)


def test_train_on_one_replica_serve_from_all_and_restart_them_all(replicas: Replicas) -> None:
    # C forks two worker processes: each opens its own connections and listens on its own.
    a, b, c = replicas.start("a"), replicas.start("b"), replicas.start("c", workers=2)
    ingest_iris(a)
    with a.client() as client:
        first = client.train("iris_classifier", "iris", "logistic_regression").prediction_set_id
    # a model type B and C had never seen
    wait_until(lambda: served(b) == served(c) == first, FOLLOW_SECONDS, f"B and C to serve set {first}")

    with b.client() as client:
        second = client.train("iris_classifier", "iris", "random_forest", {"n_estimators": 5}).prediction_set_id
        forest = client.train("iris_forest", "iris", "random_forest", {"n_estimators": 5}).prediction_set_id
    wait_until(lambda: served(a) == served(c) == second, FOLLOW_SECONDS, f"A and C to serve set {second}")
    wait_until(
        lambda: served(a, "iris_forest") == served(c, "iris_forest") == forest,
        FOLLOW_SECONDS,
        f"A and C to serve iris_forest set {forest}",
    )
    with c.client() as client:
        assert client.promote(first).previous_set_id == second
        assert [s.id for s in client.list_prediction_sets("iris_classifier").prediction_sets] == [second, first]
    wait_until(lambda: served(a) == served(b) == first, FOLLOW_SECONDS, f"A and B to serve promoted set {first}")
    assert "live reload: model type=iris_classifier now serves set=1" in b.log()

    # Every replica restarts, cleanly or not, and comes back serving the current sets without training.
    a.stop()
    b.kill()
    c.kill()
    for replica in (a, b, c):
        replica.start()
    assert replicas.current() == [("iris_classifier", first), ("iris_forest", forest)]
    for replica in (a, b, c):
        assert (served(replica), served(replica, "iris_forest")) == (first, forest)
        assert "trained model" not in replica.log().split("predserve ready on")[-1]


@pytest.mark.parametrize("failpoint", [DURING_FIT, AFTER_COMMIT])
def test_a_replica_killed_mid_train_takes_nothing_down(replicas: Replicas, failpoint: str) -> None:
    a = replicas.start("a", env={"PREDSERVE_FAILPOINT": failpoint})
    b = replicas.start("b")
    ingest_iris(b)
    with b.client() as client:
        before = client.train("iris_classifier", "iris", "logistic_regression").prediction_set_id
    wait_until(lambda: served(a) == before, FOLLOW_SECONDS, f"A to serve set {before}")

    with a.client(max_attempts=1) as client, pytest.raises(PredserveClientError) as died:
        client.train("iris_classifier", "iris", "random_forest", {"n_estimators": 5})
    assert died.value.code is grpc.StatusCode.UNAVAILABLE
    assert a.wait_exit(30) == -9  # SIGKILL at the failpoint

    if failpoint == DURING_FIT:  # nothing was recorded; B goes on serving what it served
        assert replicas.set_ids() == [before]
        expected = before
    else:  # committed, then killed before answering: B follows the commit anyway
        assert len(replicas.set_ids()) == 2
        expected = replicas.current()[0][1]
        assert expected != before
        wait_until(lambda: served(b) == expected, FOLLOW_SECONDS, f"B to follow the commit of set {expected}")
    assert served(b) == expected

    a.env = {}
    a.start()
    assert served(a) == expected
    assert not list(replicas.models_dir.glob(".tmp-*"))


def test_concurrent_trains_of_one_type_on_two_replicas_converge(replicas: Replicas) -> None:
    a, b = replicas.start("a"), replicas.start("b")
    ingest_iris(a)
    acknowledged: list[int] = []
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def train(replica: ServerProcess, algorithm: str) -> None:
        with replica.client() as client:
            go.wait()
            try:
                for _ in range(3):
                    acknowledged.append(client.train("iris_classifier", "iris", algorithm).prediction_set_id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [
        threading.Thread(target=train, args=(a, "logistic_regression")),
        threading.Thread(target=train, args=(b, "hist_gradient_boosting")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert sorted(acknowledged) == replicas.set_ids() and len(acknowledged) == 6  # every Train persisted
    ((_, current),) = replicas.current()  # exactly one is current
    wait_until(lambda: served(a) == served(b) == current, FOLLOW_SECONDS, f"both replicas to serve set {current}")


def test_a_client_of_all_replicas_keeps_answering_while_one_stops(replicas: Replicas) -> None:
    a, b = replicas.start("a"), replicas.start("b")
    ingest_iris(a)
    with a.client() as client:
        trained = client.train("iris_classifier", "iris", "logistic_regression").prediction_set_id
    wait_until(lambda: served(b) == trained, FOLLOW_SECONDS, f"B to serve set {trained}")

    failures: list[str] = []
    answers: list[int] = []
    stop = threading.Event()

    def predict_loop() -> None:
        with PredserveClient([a.target, b.target], deadline_seconds=5) as client:
            while not stop.is_set():
                try:
                    answers.append(client.predict("iris_classifier", IRIS_PROBES).prediction_set_id)
                except PredserveClientError as exc:
                    failures.append(f"{exc.code.name}: {exc.details}")

    threads = [threading.Thread(target=predict_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    assert a.stop() == 0  # SIGTERM: NOT_SERVING, then gone
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert len(answers) > 20 and set(answers) == {trained}
