"""Shared by the object-store tests: a real S3 server of the test's own, and replicas that keep their artifacts
in it, each with a models directory of its own as its cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.s3_server import S3Server
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

BUCKET = "models"
PREFIX = "team-a"
STORE_URL = f"s3://{BUCKET}/{PREFIX}"
# A dead store costs a start-up or a reload one second, not the defaults' 10 s and two retries.
FAST_STORE = ["--store-timeout", "1", "--store-retries", "0"]


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3", buckets=(BUCKET,)).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.thaw()
    server.kill()


def store_replica(
    reap: Callable[[ServerProcess], ServerProcess],
    root: Path,
    name: str,
    s3: S3Server,
    db: Path | str | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """A replica (not started) whose artifacts live in the bucket and whose cache is root/name/cache."""
    workdir = root / name
    workdir.mkdir(exist_ok=True)
    args = ["--artifact-store", STORE_URL, "--reload-interval", "0.2", *FAST_STORE, *(extra or [])]
    return reap(
        ServerProcess(
            workdir,
            db=db or root / "registry.db",
            models_dir=workdir / "cache",
            extra_args=args,
            env={**s3.env(), **(env or {})},
        )
    )


def trained_replica(
    reap: Callable[[ServerProcess], ServerProcess], root: Path, s3: S3Server, **train_args: str
) -> tuple[ServerProcess, int]:
    """Replica "a", started, with iris ingested and one set trained; and that set's id."""
    replica = store_replica(reap, root, "a", s3).start()
    ingest_iris(replica)
    return replica, train(replica, **train_args)


def ingest_iris(replica: ServerProcess) -> None:
    names, rows = iris_rows()
    with replica.client() as client:
        client.ingest("iris", rows, names)


def train(replica: ServerProcess, model_type: str = "iris_classifier", algorithm: str = "random_forest") -> int:
    with replica.client(max_attempts=1) as client:
        return client.train(model_type, "iris", algorithm).prediction_set_id


def served(replica: ServerProcess, model_type: str = "iris_classifier") -> tuple[int, list[str]]:
    """The set that answered and its labels, or (0, []) when refused."""
    try:
        with replica.client(max_attempts=1) as client:
            answer = client.predict(model_type, IRIS_PROBES, timeout=5)
    except Exception:
        return 0, []
    return answer.prediction_set_id, [str(p.value) for p in answer.predictions]


def bucket_objects(s3: S3Server) -> set[str]:
    folder = s3.object_path(BUCKET, PREFIX)
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


def cached(replica: ServerProcess) -> set[str]:
    return {path.name for path in replica.models_dir.iterdir() if not path.name.startswith(".")}
