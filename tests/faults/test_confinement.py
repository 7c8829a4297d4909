"""Garbage collection and import touch nothing outside the models directory, on the real server.

Documented behaviour: every use of a recorded artifact path (load, delete, collect) goes through the
store's one confinement check, and with an artifact HMAC key through its signature check too. A set past
retention whose row fails them is skipped: not deleted, not archived, not listed, and the log names its id
and path. The import probe's temporary copy lives in `<models>/.tmp/`, never the system temp dir, so a
SIGKILL mid-import leaves it where the next start-up removes it.
"""

from __future__ import annotations

import pickle
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.waiting import wait_until
from predserve.client.library import PredserveClientError
from tests.faults.baseline import FOREST, SMALL_FOREST, Baseline, Launch
from tests.invariants import check_invariants
from tests.support import ServerProcess, iris_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # about 8 s a test

KEY = "confinement-test-key-0123456789"
SCRATCH = ".tmp"


def train_forests(server: ServerProcess, count: int) -> list[int]:
    with server.client() as client:
        return [
            client.train(
                FOREST, dataset="iris", algorithm="random_forest", params=SMALL_FOREST, random_seed=seed
            ).prediction_set_id
            for seed in range(10, 10 + count)
        ]


def sqlite_file(server: ServerProcess) -> Path:
    assert isinstance(server.db, Path)
    return server.db


def point_row_at(server: ServerProcess, set_id: int, path: str) -> None:
    with sqlite3.connect(sqlite_file(server)) as conn:
        conn.execute("UPDATE prediction_sets SET model_artifact_path = ? WHERE id = ?", (path, set_id))
    conn.close()


def victim(path: Path) -> Path:
    path.write_bytes(b"a file predserve must never delete")
    return path


def refusal(set_id: int, path: str) -> str:
    return f"garbage collection skips set {set_id}: its artifact path {path!r} is refused"


def collect(server: ServerProcess, dry_run: bool) -> list[int]:
    with server.client() as client:
        return [s.id for s in client.garbage_collect(keep=1, dry_run=dry_run, model_type=FOREST).collected]


def test_gc_never_follows_a_row_out_of_the_models_directory(
    launch: Launch, baseline: Baseline, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Rows past retention point at an absolute path, a ../../ path and a symlink leading out: gc skips them."""
    record_property(
        "fault",
        "old rows point at an absolute path, a ../../ path and a symlink outside the models dir: gc --keep 1 "
        "and --dry-run neither delete, archive nor list them",
    )
    server = launch(baseline.copy(tmp_path)).start()
    newer = train_forests(server, 4)  # iris_forest: 1, 3, then 4..7 (current 7); past keep=1: 5, 4, 3, 1
    assert server.stop() == 0
    legit, symlinked, dotdot, absolute = newer[1], newer[0], baseline.set_id(FOREST), baseline.set_id(FOREST, 0)
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {
        absolute: (str(victim(outside / "absolute.joblib")), outside / "absolute.joblib"),
        dotdot: ("../../dotdot.joblib", victim(tmp_path / "dotdot.joblib")),
        symlinked: ("link.joblib", victim(outside / "linked.joblib")),
    }
    (server.models_dir / "link.joblib").symlink_to(outside / "linked.joblib")
    assert (server.models_dir / "../../dotdot.joblib").resolve() == tmp_path / "dotdot.joblib"
    for set_id, (path, _) in victims.items():
        point_row_at(server, set_id, path)

    server.start()
    assert collect(server, dry_run=True) == [legit]
    assert collect(server, dry_run=False) == [legit]
    assert collect(server, dry_run=True) == []  # the refused rows are not archived: still past retention, still refused
    server.kill()

    for set_id, (path, target) in victims.items():
        assert target.read_bytes() == b"a file predserve must never delete", f"set {set_id}: {path}"
        assert refusal(set_id, path) in server.log()
    assert (server.models_dir / "link.joblib").is_symlink()
    with sqlite3.connect(sqlite_file(server)) as conn:
        archived = {row[0] for row in conn.execute("SELECT id FROM prediction_sets WHERE archived_at IS NOT NULL")}
    conn.close()
    assert archived == {legit}
    server.start()
    check_invariants(sqlite_file(server), server.models_dir, server=server, broken_sets=[legit, *victims])
    server.kill()


def test_with_an_hmac_key_gc_refuses_forged_rows(
    launch: Launch, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """With an HMAC key, forged rows (outside paths, or another file inside) past retention: gc deletes none."""
    record_property(
        "fault",
        "with PREDSERVE_ARTIFACT_HMAC_KEY, old rows are rewritten to an absolute path, a ../../ path and an "
        "unrecorded file inside the models dir: gc deletes, archives and lists none of them",
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    server = launch(workdir, env={"PREDSERVE_ARTIFACT_HMAC_KEY": KEY}).start()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
    ids = train_forests(server, 6)  # current ids[5]; fallback ids[4]; past keep=1: ids[3], ids[2], ids[1], ids[0]
    assert server.stop() == 0
    victims = {
        ids[0]: (str(victim(tmp_path / "absolute.joblib")), tmp_path / "absolute.joblib"),
        ids[1]: ("../../dotdot.joblib", victim(tmp_path / "dotdot.joblib")),
        # inside the store, so only the signature (which covers the path) tells the row is forged
        ids[2]: ("unrecorded.joblib", victim(server.models_dir / "unrecorded.joblib")),
    }
    for set_id, (path, _) in victims.items():
        point_row_at(server, set_id, path)

    server.start()
    assert collect(server, dry_run=True) == [ids[3]]
    assert collect(server, dry_run=False) == [ids[3]]
    server.kill()

    for set_id, (path, target) in victims.items():
        assert target.read_bytes() == b"a file predserve must never delete", f"set {set_id}: {path}"
        assert refusal(set_id, path) in server.log()
    assert "invalid signature" in server.log()


def test_kill_during_import_probe_leaves_no_temporary_copy(
    launch: Launch, baseline: Baseline, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL while the import probe runs: its temporary copy is in <models>/.tmp/ and start-up removes it."""
    record_property(
        "fault",
        "SIGKILL of the server while ImportModel's probe loads its temporary copy: the next start-up removes it, "
        "and nothing was left in the system temp dir",
    )
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    server = launch(baseline.copy(tmp_path), env={"TMPDIR": str(system_temp)}).start()
    scratch = server.models_dir / SCRATCH
    # A large, allowed pickle (bytes) widens the window between the copy appearing and the probe's answer.
    payload = pickle.dumps(b"\0" * (64 << 20), protocol=5)
    errors: list[PredserveClientError] = []

    def import_model() -> None:
        with server.client() as client:
            try:
                client.import_model("iris_imported", payload)
            except PredserveClientError as exc:
                errors.append(exc)

    thread = threading.Thread(target=import_model)
    thread.start()
    copies = wait_until(lambda: scratch.is_dir() and list(scratch.iterdir()), 60, f"a temporary copy in {scratch}")
    server.kill()
    thread.join(timeout=60)
    assert errors, "the import finished before the kill"
    assert [p for p in copies if p.exists()], "the copy was removed before the kill; the fault was not injected"
    assert (scratch.stat().st_mode & 0o777) == 0o700
    assert list(system_temp.iterdir()) == []

    server.start()
    assert list(scratch.iterdir()) == []
    assert f"removing temporary copy left by an interrupted import: {copies[0].name}" in server.log()
    check_invariants(sqlite_file(server), server.models_dir, acknowledged=baseline.trained, server=server)
    with server.client() as client:
        assert FOREST in {m.model_type for m in client.list_models().models}
    server.kill()
