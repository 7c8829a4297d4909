"""What the server will unpickle: owner-only files, no world-writable artifacts, and signed checksums.

The forged rows here point at a pickle that runs code when loaded (it creates a directory), so a
test that it was refused is also a test that the code did not run.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import joblib
import pytest

from predserve.server.domain import ArtifactInfo
from predserve.server.errors import ArtifactRejected
from predserve.server.storage.artifacts import ArtifactStore
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

KEY = b"k" * 32


class RunsCodeWhenLoaded:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def attacker_file(models_dir: Path, name: str, marker: Path) -> tuple[str, int]:
    """Writes a malicious pickle into the models directory; returns its SHA-256 and size."""
    path = models_dir / name
    joblib.dump(RunsCodeWhenLoaded(marker), path)
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def new_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Servers these tests stop and start themselves, killed at the end whatever happened."""
    started: list[ServerProcess] = []

    def make(**kwargs: object) -> ServerProcess:
        started.append(ServerProcess(tmp_path, **kwargs))  # type: ignore[arg-type]
        return started[-1].start()

    yield make
    for process in started:
        if process.process is not None:
            process.kill()


def test_files_are_owner_only_and_a_world_writable_artifact_is_refused(
    new_server: Callable[..., ServerProcess],
) -> None:
    server = new_server()
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        trained = client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    artifact = server.models_dir / trained.model_artifact_path
    # SQLite gives the -wal and -shm files the database file's mode; they exist only while it is open.
    assert (mode(server.db), mode(server.models_dir), mode(artifact)) == (0o600, 0o700, 0o600)

    server.stop()
    artifact.chmod(0o666)
    server.start()
    with server.client() as client:
        [status] = client.list_models().models
    assert not status.loaded
    assert f"artifact {trained.model_artifact_path} is world-writable (mode 0666)" in status.status_message
    assert "REFUSED current artifact of model type iris_classifier" in server.log()


def test_with_an_hmac_key_a_forged_row_or_a_tampered_artifact_is_not_loaded(
    tmp_path: Path, new_server: Callable[..., ServerProcess]
) -> None:
    key_file = tmp_path / "artifact.key"
    key_file.write_bytes(KEY)
    server = new_server(env={"PREDSERVE_ARTIFACT_HMAC_KEY_FILE": str(key_file)})
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        genuine = client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
        tampered = client.train("iris_forest", dataset="iris", algorithm="random_forest", params={"n_estimators": 5})
    server.stop()

    # Forged row: a new current set for iris_classifier, pointing at the attacker's file with its true
    # checksum, and the signature copied from the genuine row.
    forged_marker, swapped_marker = tmp_path / "forged-ran", tmp_path / "swapped-ran"
    sha, size = attacker_file(server.models_dir, "iris_classifier-forged.joblib", forged_marker)
    # Tampered artifact: iris_forest's file replaced, and its row's checksum and size updated to match.
    swapped_sha, swapped_size = attacker_file(server.models_dir, tampered.model_artifact_path, swapped_marker)
    with sqlite3.connect(server.db) as conn:
        conn.execute("UPDATE prediction_sets SET is_current = 0 WHERE id = ?", (genuine.prediction_set_id,))
        conn.execute(
            """INSERT INTO prediction_sets (model_type, dataset, is_current, model_artifact_path, artifact_sha256,
                   artifact_size_bytes, environment, artifact_signature)
               SELECT model_type, dataset, 1, 'iris_classifier-forged.joblib', ?, ?, environment, artifact_signature
                 FROM prediction_sets WHERE id = ?""",
            (sha, size, genuine.prediction_set_id),
        )
        conn.execute(
            "UPDATE prediction_sets SET artifact_sha256 = ?, artifact_size_bytes = ? WHERE id = ?",
            (swapped_sha, swapped_size, tampered.prediction_set_id),
        )

    server.start()
    with server.client() as client:
        answer = client.predict("iris_classifier", IRIS_PROBES)
        models = {m.model_type: m for m in client.list_models().models}
    log = server.log()
    assert not forged_marker.exists() and not swapped_marker.exists()
    assert answer.prediction_set_id == genuine.prediction_set_id  # the existing fallback serves the genuine set
    assert "REFUSED current artifact of model type iris_classifier" in log
    assert "artifact iris_classifier-forged.joblib has an invalid signature" in log
    assert not models["iris_forest"].loaded
    assert f"artifact {tampered.model_artifact_path} has an invalid signature" in models["iris_forest"].status_message

    # Without the key the very same database and files get past the checksums; the unpickler's allow-list
    # (server/storage/safe_pickle.py) is then what keeps the attacker's code from running.
    server.stop()
    server.env = {}
    server.start()
    assert not forged_marker.exists() and not swapped_marker.exists()
    assert f"it names {os.name}.mkdir, which is not on the allow-list" in server.log()


def test_signatures_bind_the_checksum_to_the_model_type_and_the_key(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "models", signing_key=KEY)
    store.prepare()
    info, data = store.write({"not": "a pipeline"}, "churn")
    assert info.signature and store.read_verified(info, "churn") == data
    assert ArtifactStore(store.root).read_verified(info, "churn") == data  # no key: checksum only, as before

    refusals = {
        "other model type": (store, info, "price"),
        "unsigned": (store, ArtifactInfo(info.relative_path, info.sha256, info.size_bytes), "churn"),
        "other key": (ArtifactStore(store.root, signing_key=b"x" * 32), info, "churn"),
    }
    for case, (reader, record, model_type) in refusals.items():
        with pytest.raises(ArtifactRejected) as error:
            reader.read_verified(record, model_type)
        expected = "has no signature" if case == "unsigned" else "has an invalid signature"
        assert expected in str(error.value), case
