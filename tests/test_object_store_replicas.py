"""Replicas on nothing shared but a PostgreSQL registry and a bucket (issue 25): each has a models directory of
its own, as a pod with an emptyDir would, and a real S3 server (`rclone serve s3`) holds the artifacts."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.s3_server import S3Server
from harness.waiting import wait_until
from tests.object_stores import BUCKET, PREFIX, bucket_objects, cached, ingest_iris, s3, served, store_replica, train
from tests.support import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.object_store]
__all__ = ["s3"]  # a fixture, used by name
# Polling once a minute: a replica that follows within seconds was told by NOTIFY, and fetched before it swapped.
NOTIFIED_ONLY = ["--reload-interval", "60"]


def test_three_replicas_with_their_own_disks_serve_every_train_promote_and_rollback(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path, postgres_url: str
) -> None:
    a, b, c = (store_replica(reap, tmp_path, name, s3, db=postgres_url, extra=NOTIFIED_ONLY) for name in "abc")
    for replica in (a, b, c):
        replica.start()
    ingest_iris(a)
    first = train(a, algorithm="logistic_regression")
    answer = served(a)
    for replica in (b, c):
        wait_until(lambda r=replica: served(r) == answer, 10, "every replica to serve A's Train")
        assert cached(replica) == cached(a)  # fetched into its own directory, not read from A's

    second = train(b)
    for replica in (a, c):
        wait_until(lambda r=replica: served(r)[0] == second, 10, "every replica to serve B's Train")
    with c.client() as client:
        client.rollback("iris_classifier")
    for replica in (a, b):
        wait_until(lambda r=replica: served(r)[0] == first, 10, "every replica to follow the rollback")
    with a.client() as client:
        client.promote(second)

    b.kill()  # kill -9 of a replica, its cache lost with its pod
    shutil.rmtree(b.models_dir)
    b.start()
    assert served(b)[0] == second

    s3.kill()  # kill -9 of the store: what is cached serves on
    assert all(served(replica)[0] == second for replica in (a, b, c))
    s3.start()
    third = train(c, algorithm="logistic_regression")
    for replica in (a, b):
        wait_until(lambda r=replica: served(r)[0] == third, 10, "every replica to serve C's Train")

    with a.client() as client:
        sets = client.list_prediction_sets("iris_classifier").prediction_sets
    assert sorted(s.id for s in sets) == [first, second, third]  # nothing lost, nothing twice
    recorded = {s.model_artifact_path for s in sets}
    assert recorded <= bucket_objects(s3)
    for name in recorded:
        stored = s3.object_path(BUCKET, f"{PREFIX}/{name}").read_bytes()
        assert all((r.models_dir / name).read_bytes() == stored for r in (a, b, c) if name in cached(r))
