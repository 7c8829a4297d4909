"""Artifacts on object storage (issue 25), against a real S3 server (`rclone serve s3`) on a loopback port: the
bucket is the store, each replica's models directory a cache that verifies every byte before it loads it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.metrics import metrics_url, samples, scrape
from harness.ports import free_port
from harness.s3_server import S3Server
from harness.waiting import wait_until
from predserve.client.library import PredserveClientError
from predserve.server.publishing import MODEL_HEALTH_PREFIX
from tests.object_stores import (
    BUCKET,
    PREFIX,
    STORE_URL,
    bucket_objects,
    cached,
    ingest_iris,
    s3,
    served,
    store_replica,
    train,
    trained_replica,
)
from tests.support import PROJECT_ROOT, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.object_store]
__all__ = ["s3"]  # a fixture, used by name


def _flip_a_byte(path: Path) -> None:
    """Same size, other bytes: only the checksum can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))


def _artifact(names: set[str]) -> str:
    return next(name for name in names if name.endswith(".joblib"))


def test_a_train_is_stored_first_and_a_replica_with_an_empty_cache_serves_it_verified(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    metrics_port = free_port()
    extra = ["--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
    a = store_replica(reap, tmp_path, "a", s3, extra=extra).start()
    ingest_iris(a)
    set_id = train(a)
    answer = served(a)
    stored = bucket_objects(s3)
    assert {name.rsplit(".", 2)[-1] for name in stored} == {"joblib", "runtime"}, stored
    with a.client() as client:
        recorded = client.list_prediction_sets("iris_classifier").prediction_sets[0].model_artifact_path
    assert recorded in stored  # the row names the object by its key, relative to the store
    a.kill()

    shutil.rmtree(a.models_dir)  # a new pod: an emptyDir cache
    a.start()
    assert served(a) == answer and answer[0] == set_id
    assert cached(a) == stored
    for name in stored:
        assert (a.models_dir / name).read_bytes() == s3.object_path(BUCKET, f"{PREFIX}/{name}").read_bytes()
    log = a.log()
    assert f"fetched {recorded} (sha256 " in log and STORE_URL in log
    figures = samples(scrape(metrics_url(metrics_port)))
    assert figures[("predserve_store_fetches_total", frozenset({("outcome", "ok")}))] == 2
    assert figures[("predserve_store_fetch_bytes_total", frozenset())] == sum(
        (a.models_dir / name).stat().st_size for name in stored
    )
    assert ("predserve_cache_lookups_total", frozenset({("result", "miss")})) not in figures  # prefetched, then hit
    assert figures[("predserve_cache_lookups_total", frozenset({("result", "hit")}))] >= 2


def test_a_tampered_object_in_the_bucket_is_refused_and_the_older_set_serves_loudly(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    a, older = trained_replica(reap, tmp_path, s3, algorithm="logistic_regression")
    before = bucket_objects(s3)
    newer = train(a)
    a.kill()
    newest_artifact = _artifact(bucket_objects(s3) - before)
    _flip_a_byte(s3.object_path(BUCKET, f"{PREFIX}/{newest_artifact}"))

    b = store_replica(reap, tmp_path, "b", s3).start()  # nothing cached: everything comes from the bucket
    assert served(b)[0] == older
    with b.client() as client:
        status = next(m for m in client.list_models().models if m.model_type == "iris_classifier")
    assert "FALLBACK" in status.status_message and str(newer) in status.status_message
    assert f"object {newest_artifact} in {STORE_URL}/ does not match its recorded SHA-256" in b.log()
    assert newest_artifact not in cached(b)  # a refused fetch never reaches the cache


def test_a_tampered_cached_file_is_fetched_again(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    a, set_id = trained_replica(reap, tmp_path, s3)
    answer = served(a)
    a.kill()
    artifact = _artifact(cached(a))
    _flip_a_byte(a.models_dir / artifact)

    a.start()
    assert served(a) == answer and answer[0] == set_id
    assert f"cached {artifact} does not verify" in a.log()
    assert (a.models_dir / artifact).read_bytes() == s3.object_path(BUCKET, f"{PREFIX}/{artifact}").read_bytes()


@pytest.mark.parametrize("outage", ["killed", "frozen"])
def test_a_train_while_the_store_is_down_records_nothing(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path, outage: str
) -> None:
    """Killed, the store refuses connections; frozen (SIGSTOP), it takes them and never answers: --store-timeout
    bounds the wait."""
    a, first = trained_replica(reap, tmp_path, s3)
    files_before = cached(a)
    s3.kill() if outage == "killed" else s3.freeze()
    with a.client(max_attempts=1) as client:
        with pytest.raises(PredserveClientError) as refused:
            client.train("iris_classifier", "iris", "random_forest")
        assert "UNAVAILABLE" in str(refused.value) and STORE_URL in str(refused.value)
        sets = client.list_prediction_sets("iris_classifier").prediction_sets
    assert [s.id for s in sets] == [first]
    assert cached(a) == files_before  # the cache's copy of the failed Train is gone too
    assert served(a)[0] == first  # Predict never touches the store


def test_a_replica_killed_between_its_upload_and_its_commit_records_nothing_and_recover_finds_the_object(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    a, first = trained_replica(reap, tmp_path, s3)
    a.stop()
    before = bucket_objects(s3)
    dying = store_replica(reap, tmp_path, "a", s3, env={"PREDSERVE_FAILPOINT": "after_upload"}).start()
    with pytest.raises(PredserveClientError):
        train(dying)
    assert dying.wait_exit(30) == -signal.SIGKILL
    (uploaded,) = bucket_objects(s3) - before  # the artifact is in the bucket; its compiled form never was

    a.start()
    with a.client() as client:
        assert [s.id for s in client.list_prediction_sets("iris_classifier").prediction_sets] == [first]
    assert served(a)[0] == first
    assert "ignoring 1 artifact(s) that no prediction set records" in a.log() and uploaded in a.log()


def test_a_start_while_the_store_is_down_serves_what_is_cached_and_fetches_the_rest_when_it_returns(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    a = store_replica(reap, tmp_path, "a", s3).start()
    ingest_iris(a)
    cached_set = train(a, "iris_cached")
    before = cached(a)
    fetched_set = train(a, "iris_fetched")
    answer = served(a, "iris_fetched")
    a.kill()
    for name in cached(a) - before:  # this replica's cache has lost the second type's files
        (a.models_dir / name).unlink()
    s3.kill()

    a.start()
    assert served(a, "iris_cached")[0] == cached_set
    with a.client() as client:
        assert client.health(MODEL_HEALTH_PREFIX + "iris_cached") == "SERVING"
        assert client.health(MODEL_HEALTH_PREFIX + "iris_fetched") == "NOT_SERVING"
        status = next(m for m in client.list_models().models if m.model_type == "iris_fetched")
    assert not status.loaded and "waits for the artifact store" in status.status_message
    assert "model type iris_fetched is NOT_SERVING until set" in a.log()

    s3.start()
    wait_until(lambda: served(a, "iris_fetched") == answer, 30, "the type to serve once the store answers")
    assert answer[0] == fetched_set


def test_a_reload_while_the_store_is_down_keeps_the_old_set_and_retries(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    """Two replicas on one SQLite registry, each with its own cache; B learns of A's Train while the store is down."""
    a, old = trained_replica(reap, tmp_path, s3)
    b = store_replica(reap, tmp_path, "b", s3).start()
    assert served(b)[0] == old
    assert b.process is not None
    os.kill(b.process.pid, signal.SIGSTOP)  # B hears nothing until the store is down
    try:
        new = train(a, algorithm="logistic_regression")
        s3.kill()
    finally:
        os.kill(b.process.pid, signal.SIGCONT)
    b.wait_for_log(f"live reload: set {new} of model type iris_classifier", 30)
    assert "will retry" in b.log()
    assert all(served(b)[0] == old for _ in range(5))  # the old set serves meanwhile

    s3.start()
    wait_until(lambda: served(b)[0] == new, 30, "B to serve the new set once the store answers")


def test_a_full_cache_keeps_the_sets_served_and_fetches_the_others_again(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    a = store_replica(reap, tmp_path, "a", s3, extra=["--cache-max-bytes", "1"]).start()
    ingest_iris(a)
    first = train(a, algorithm="logistic_regression")
    train(a, algorithm="logistic_regression")
    current = train(a, algorithm="logistic_regression")
    with a.client() as client:
        current_path = client.list_prediction_sets("iris_classifier").prediction_sets[0].model_artifact_path
        assert {_artifact({name}) for name in cached(a) if name.endswith(".joblib")} == {current_path}
        pinned = client.predict("iris_classifier", [[5.1, 3.5, 1.4, 0.2]], prediction_set_id=first)
    assert pinned.prediction_set_id == first and served(a)[0] == current
    assert len(bucket_objects(s3)) >= 3  # evicted from the cache, never from the store
    assert "cache over 1 bytes: evicted" in a.log()


def test_wrong_credentials_stop_the_start_in_one_line_that_keeps_the_secret(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    wrong = "wrong-" + s3.secret_key[:20]
    replica = store_replica(reap, tmp_path, "a", s3, env={"AWS_SECRET_ACCESS_KEY": wrong})
    with pytest.raises(RuntimeError, match="server exited with 1"):
        replica.start()
    errors = [line for line in replica.log().splitlines() if " ERROR " in line or "Traceback" in line]
    assert len(errors) == 1, replica.log()
    assert f"predserve cannot start: the artifact store {STORE_URL}/ refused" in errors[0]
    assert "AWS_SECRET_ACCESS_KEY" in errors[0]
    assert wrong not in replica.log() and s3.secret_key not in replica.log()


def test_recover_registers_an_orphan_object_of_the_bucket_and_gc_deletes_there(
    s3: S3Server, reap: Callable[[ServerProcess], ServerProcess], tmp_path: Path
) -> None:
    a = store_replica(reap, tmp_path, "a", s3).start()
    ingest_iris(a)
    train(a, algorithm="logistic_regression")
    artifact = _artifact(bucket_objects(s3))
    orphan = artifact.replace(artifact.rsplit("-", 1)[-1], "0123456789ab.joblib")  # a Train killed before commit
    shutil.copyfile(s3.object_path(BUCKET, f"{PREFIX}/{artifact}"), s3.object_path(BUCKET, f"{PREFIX}/{orphan}"))
    a.stop()
    recovered = subprocess.run(
        [
            sys.executable,
            "-m",
            "predserve.server",
            "recover",
            *a.extra_args[:2],
            "--db",
            str(a.db),
            "--models-dir",
            str(a.models_dir),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, **a.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert recovered.returncode == 0, recovered.stderr
    assert "1 of 1 orphan artifact(s) recovered" in recovered.stdout
    assert orphan not in bucket_objects(s3)  # its copy is recorded under a new name

    a.start()
    with a.client() as client:
        assert len(client.list_prediction_sets("iris_classifier").prediction_sets) == 2
    train(a, algorithm="logistic_regression")
    train(a, algorithm="logistic_regression")
    with a.client() as client:
        assert (
            len(client.garbage_collect(keep=1).collected) == 2
        )  # older sets archived: their objects deleted from the bucket
        sets = client.list_prediction_sets("iris_classifier").prediction_sets
    kept = {s.model_artifact_path for s in sets if not s.archived_at}
    assert len(kept) == 2 and len(sets) == 4
    assert {name for name in bucket_objects(s3) if name.endswith(".joblib")} == kept
