"""Resource faults on a running server: no room for an artifact, a full disk, a read-only or locked database.

Each Train that cannot be stored fails with a clear status and message, leaves no partial or temporary
file and no row, and the previous current set keeps being served.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from predserve.client.library import PredserveClientError, UnavailableError
from tests.faults.baseline import CLASSIFIER, FOREST, Baseline, Launch
from tests.invariants import TEMP_PREFIX, check_invariants
from tests.support import IRIS_PROBES, ServerProcess

pytestmark = pytest.mark.faults

BIG_FOREST = {"n_estimators": 300}  # about 570 kB on iris: larger than the room we leave
ARTIFACT_ROOM = 256 * 1024  # room for the database, its WAL, the log and a small model, not for BIG_FOREST
BUSY_TIMEOUT = 0.5


def limit_file_size(limit: int) -> Callable[[], None]:
    """A preexec for the server: files it writes cannot grow past `limit` bytes (EFBIG, SIGXFSZ ignored)."""

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def as_unprivileged_owner() -> None:
    """A preexec: as root, drop the capabilities that bypass file modes, so chmod binds the server as it
    binds a service account; as any other user there is nothing to drop."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search, cap_fowner = 24, 1, 2, 3
    for capability in (cap_dac_override, cap_dac_read_search, cap_fowner):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def models_on_disk(models_dir: Path) -> set[str]:
    return {p.name for p in models_dir.iterdir()}


def served_sets(server: ServerProcess) -> dict[str, int]:
    """Which prediction set answers a Predict of each model type right now."""
    with server.client() as client:
        return {t: client.predict(t, IRIS_PROBES).prediction_set_id for t in (FOREST, CLASSIFIER)}


def test_artifact_larger_than_the_file_size_limit(launch: Launch, baseline: Baseline, tmp_path: Path) -> None:
    """Artifact write fails with EFBIG (RLIMIT_FSIZE): RESOURCE_EXHAUSTED, nothing left, old model served."""
    server = launch(baseline.copy(tmp_path), preexec=limit_file_size(ARTIFACT_ROOM)).start()
    before = models_on_disk(server.models_dir)
    served = served_sets(server)
    with server.client() as client:
        with pytest.raises(PredserveClientError) as caught:
            client.train(FOREST, dataset="iris", algorithm="random_forest", params=BIG_FOREST)
        assert caught.value.code.name == "RESOURCE_EXHAUSTED"
        assert caught.value.details == "no space left to write the model artifact (File too large)"
        assert models_on_disk(server.models_dir) == before
        assert served_sets(server) == served
        check_invariants(server.db, server.models_dir, acknowledged=baseline.trained, server=server)
        # The server is not wedged: a model that fits is stored and served.
        small = client.train(CLASSIFIER, dataset="iris", algorithm="logistic_regression", random_seed=5)
    check_invariants(server.db, server.models_dir, acknowledged=[*baseline.trained, small], server=server)
    server.kill()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 kB tmpfs; mounting one needs root (CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full(launch: Launch, baseline: Baseline, tmp_path: Path, small_disk: Path) -> None:
    """Database and models on a full 512 kB tmpfs (ENOSPC): Train and Ingest fail RESOURCE_EXHAUSTED."""
    copy = baseline.copy(tmp_path)
    shutil.move(copy / "predictions.db", small_disk / "predictions.db")
    shutil.move(copy / "models", small_disk / "models")
    server = launch(tmp_path, db=small_disk / "predictions.db", models_dir=small_disk / "models").start()
    before = models_on_disk(server.models_dir)
    served = served_sets(server)
    try:
        with server.client() as client:
            with pytest.raises(PredserveClientError) as artifact:
                client.train(FOREST, dataset="iris", algorithm="random_forest", params=BIG_FOREST)
            assert artifact.value.code.name == "RESOURCE_EXHAUSTED"
            assert artifact.value.details == "no space left to write the model artifact (No space left on device)"
            assert models_on_disk(server.models_dir) == before

            many = [([float(i)] * 4, i % 3) for i in range(40_000)]
            with pytest.raises(PredserveClientError) as history:
                client.ingest("flood", many)
            assert history.value.code.name == "RESOURCE_EXHAUSTED"
            assert history.value.details.startswith("no space left in the database: database or disk is full")
            assert served_sets(server) == served
        check_invariants(server.db, server.models_dir, acknowledged=baseline.trained, server=server)
        with sqlite3.connect(f"{server.db.as_uri()}?mode=ro", uri=True) as conn:
            assert conn.execute("SELECT COUNT(*) FROM data_history WHERE dataset = 'flood'").fetchone() == (0,)
    finally:
        server.kill()


@pytest.fixture(scope="module")
def storage_server(baseline: Baseline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the database faults, unable to bypass file modes, with a short busy timeout."""
    workdir = baseline.copy(tmp_path_factory.mktemp("storage-faults"))
    server = ServerProcess(
        workdir, extra_args=["--busy-timeout", str(BUSY_TIMEOUT)], preexec=as_unprivileged_owner
    ).start()
    yield server
    server.kill()


def database_files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def test_read_only_database(storage_server: ServerProcess, baseline: Baseline) -> None:
    """Database file (and WAL/SHM) made read-only while serving: Train fails clearly, Predict keeps working."""
    server = storage_server
    before = models_on_disk(server.models_dir)
    served = served_sets(server)
    for path in database_files(server.db):
        path.chmod(0o444)
    try:
        with server.client() as client:
            with pytest.raises(PredserveClientError) as caught:
                client.train(FOREST, dataset="iris", algorithm="random_forest", params={"n_estimators": 5})
            assert caught.value.code.name == "INTERNAL"
            assert caught.value.details == "the database is read-only: attempt to write a readonly database"
            assert served_sets(server) == served
            assert models_on_disk(server.models_dir) == before  # the written artifact was removed again
    finally:
        # SQLite creates a missing WAL or SHM file with the database file's mode: restore those too.
        for path in database_files(server.db):
            path.chmod(0o644)
    check_invariants(server.db, server.models_dir, acknowledged=baseline.trained, server=server)


def test_locked_database(storage_server: ServerProcess, baseline: Baseline) -> None:
    """Another connection holds BEGIN EXCLUSIVE past the busy timeout: Train UNAVAILABLE, Predict works."""
    server = storage_server
    before = models_on_disk(server.models_dir)
    served = served_sets(server)
    holder = sqlite3.connect(server.db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with server.client(train_deadline_seconds=10.0) as client:
            started = time.monotonic()
            with pytest.raises(UnavailableError) as caught:
                client.train(FOREST, dataset="iris", algorithm="random_forest", params={"n_estimators": 5})
            elapsed = time.monotonic() - started
            assert caught.value.details == ("the database is busy (another writer holds its lock): database is locked")
            assert BUSY_TIMEOUT <= elapsed < 10.0  # waited for the lock, answered well within the deadline
            assert served_sets(server) == served
            assert models_on_disk(server.models_dir) == before
            assert not [p for p in server.models_dir.iterdir() if p.name.startswith(TEMP_PREFIX)]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with server.client() as client:
        trained = client.train(FOREST, dataset="iris", algorithm="random_forest", params={"n_estimators": 5})
    check_invariants(server.db, server.models_dir, acknowledged=[*baseline.trained, trained], server=server)
