"""Start-up never dies of one bad artifact: each case really damages the current iris_forest artifact.

Documented behaviour: when a current artifact is refused the server serves the newest older set of that
type that verifies; ListModels says FALLBACK and why, and `predserve.model.<type>` stays SERVING. When no
set verifies the type is NOT_SERVING and Predict answers FAILED_PRECONDITION with the reason. The other
type is served as usual, the database is not rewritten, and `--strict` refuses to start instead.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.datasets import load_diabetes, load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import Ridge

from predserve.client.library import FailedPreconditionError
from tests.faults.baseline import CLASSIFIER, FOREST, Baseline, Launch
from tests.invariants import check_invariants, sha256_of
from tests.support import IRIS_PROBES

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # 14 server starts


@dataclass(frozen=True)
class Case:
    description: str
    damage: Callable[[Path, Path, sqlite3.Connection], None]  # (models dir, artifact, database)
    reason: str  # what ListModels, the log and a pinned Predict must say


def truncate(models: Path, artifact: Path, db: sqlite3.Connection) -> None:
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 2])


def flip_bytes(models: Path, artifact: Path, db: sqlite3.Connection) -> None:
    data = bytearray(artifact.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    artifact.write_bytes(bytes(data))


def delete(models: Path, artifact: Path, db: sqlite3.Connection) -> None:
    artifact.unlink()


def replace_with_other_pickle(models: Path, artifact: Path, db: sqlite3.Connection) -> None:
    """Another valid pickle, padded to the recorded size: only the SHA-256 tells them apart."""
    size = artifact.stat().st_size
    (other,) = db.execute("SELECT model_artifact_path FROM prediction_sets WHERE model_type = ?", (CLASSIFIER,))
    foreign = (models / other[0]).read_bytes()
    assert len(foreign) < size
    artifact.write_bytes(foreign + b"\0" * (size - len(foreign)))
    assert hasattr(joblib.load(artifact), "predict")  # still a loadable model


def impostor_with_recorded_hash(model: object) -> Callable[[Path, Path, sqlite3.Connection], None]:
    """Another valid model whose SHA-256 and size are recorded too: only the self-check can refuse it."""

    def damage(models: Path, artifact: Path, db: sqlite3.Connection) -> None:
        joblib.dump(model, artifact)
        db.execute(
            "UPDATE prediction_sets SET artifact_sha256 = ?, artifact_size_bytes = ? WHERE id = 3",
            (sha256_of(artifact), artifact.stat().st_size),
        )

    return damage


def symlink_outside(models: Path, artifact: Path, db: sqlite3.Connection) -> None:
    """The very same bytes, but reached through a symlink that leads out of the models directory."""
    outside = models.parent / "outside.joblib"
    shutil.move(artifact, outside)
    artifact.symlink_to(outside)


def symlink_inside(models: Path, artifact: Path, db: sqlite3.Connection) -> None:
    elsewhere = models / "elsewhere.bin"
    shutil.move(artifact, elsewhere)
    artifact.symlink_to(elsewhere.name)


def row_path(make: Callable[[Path], str]) -> Callable[[Path, Path, sqlite3.Connection], None]:
    """The same bytes moved outside the models directory, and the row pointed at them."""

    def damage(models: Path, artifact: Path, db: sqlite3.Connection) -> None:
        shutil.move(artifact, models.parent / "x.joblib")
        db.execute("UPDATE prediction_sets SET model_artifact_path = ? WHERE id = 3", (make(models),))

    return damage


def _constant_classifier() -> DummyClassifier:
    x, _ = load_iris(return_X_y=True)
    return DummyClassifier(strategy="constant", constant=9).fit(x, np.full(len(x), 9))


def _diabetes_regressor() -> Ridge:
    x, y = load_diabetes(return_X_y=True)
    return Ridge().fit(x, y)


CASES = {
    "truncated": Case("cut to half its size", truncate, "the database recorded"),
    "flipped": Case("with 16 bytes flipped in the middle", flip_bytes, "does not match its recorded SHA-256"),
    "deleted": Case("deleted", delete, "is missing"),
    "tampered": Case(
        "replaced by another valid pickle of the same size (SHA-256 mismatch)",
        replace_with_other_pickle,
        "does not match its recorded",
    ),
    "impostor": Case(
        "replaced by another model, its SHA-256 and size recorded too",
        impostor_with_recorded_hash(_constant_classifier()),
        "fails its self-check: it no longer gives the answers",
    ),
    "wrong_shape": Case(
        "replaced by a 10-feature regressor, its SHA-256 and size recorded too",
        impostor_with_recorded_hash(_diabetes_regressor()),
        "fails its self-check: predict raised ValueError",
    ),
    "symlink_outside": Case(
        "replaced by a symlink leading outside the models directory", symlink_outside, "leads outside"
    ),
    "symlink_inside": Case(
        "replaced by a symlink to the same bytes inside the models directory", symlink_inside, "cannot be read"
    ),
    "dotdot_path": Case(
        "moved out, its row's path set to ../x.joblib", row_path(lambda models: "../x.joblib"), "is not a plain name"
    ),
    "absolute_path": Case(
        "moved out, its row's path set to an absolute path",
        row_path(lambda models: str(models.parent / "x.joblib")),
        "is not a plain name",
    ),
}


def damage_current_forest(workdir: Path, damage: Callable[[Path, Path, sqlite3.Connection], None]) -> None:
    models = workdir / "models"
    with closing_db(workdir / "predictions.db") as db:
        (path,) = db.execute("SELECT model_artifact_path FROM prediction_sets WHERE id = 3").fetchone()
        damage(models, models / path, db)


class closing_db:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def dump(db: Path) -> str:
    with closing_db(db) as conn:
        return "\n".join(conn.iterdump())


@pytest.mark.parametrize("case", list(CASES))
def test_start_up_survives_a_bad_current_artifact(
    launch: Launch, baseline: Baseline, tmp_path: Path, case: str, record_property: Callable[[str, object], None]
) -> None:
    """Start-up with the current iris_forest artifact damaged: falls back to the older set."""
    record_property("fault", f"current iris_forest artifact {CASES[case].description}: falls back to the older set")
    workdir = baseline.copy(tmp_path)
    damage_current_forest(workdir, CASES[case].damage)
    server = launch(workdir)
    before = dump(server.db)

    server.start()
    check_invariants(
        server.db,
        server.models_dir,
        acknowledged=baseline.trained[:2],
        server=server,
        broken_sets={3},
        fallbacks={FOREST: 1},
    )
    with server.client() as client:
        (forest,) = [m for m in client.list_models().models if m.model_type == FOREST]
        assert forest.status_message.startswith("FALLBACK: current set 3 refused (")
        assert CASES[case].reason in forest.status_message, forest.status_message
        assert forest.status_message.endswith("; serving older set 1")
        assert client.predict(CLASSIFIER, IRIS_PROBES).prediction_set_id == 2
        with pytest.raises(FailedPreconditionError) as pinned:
            client.predict(FOREST, IRIS_PROBES, prediction_set_id=3)
        assert CASES[case].reason in pinned.value.details
    log = server.log()
    assert f"REFUSED current artifact of model type {FOREST} (set 3)" in log and CASES[case].reason in log
    server.kill()
    assert dump(server.db) == before  # the fallback lives in memory only


def test_no_verifying_set_leaves_the_type_unavailable(launch: Launch, baseline: Baseline, tmp_path: Path) -> None:
    """Both iris_forest artifacts damaged: the type is NOT_SERVING, Predict says why, the other type serves."""
    workdir = baseline.copy(tmp_path)
    damage_current_forest(workdir, delete)
    with closing_db(workdir / "predictions.db") as db:
        (older,) = db.execute("SELECT model_artifact_path FROM prediction_sets WHERE id = 1").fetchone()
        truncate(workdir / "models", workdir / "models" / older, db)
    server = launch(workdir)
    before = dump(server.db)

    server.start()
    check_invariants(
        server.db,
        server.models_dir,
        acknowledged=baseline.trained[1:2],
        server=server,
        broken_sets={1, 3},
        fallbacks={FOREST: None},
    )
    with server.client() as client:
        assert client.health(f"predserve.model.{FOREST}") == "NOT_SERVING"
        assert client.health() == "SERVING"
        with pytest.raises(FailedPreconditionError) as refused:
            client.predict(FOREST, IRIS_PROBES)
        assert refused.value.details.startswith(f"model type '{FOREST}' has no usable model: current set 3 refused: ")
        assert "is missing" in refused.value.details
    assert "older set 1 of model type iris_forest refused too" in server.log()
    server.kill()
    assert dump(server.db) == before


def test_strict_refuses_to_start_with_a_bad_current_artifact(
    launch: Launch, baseline: Baseline, tmp_path: Path
) -> None:
    """--strict with the current iris_forest artifact deleted: start-up exits non-zero and binds nothing."""
    workdir = baseline.copy(tmp_path)
    damage_current_forest(workdir, delete)
    server = launch(workdir, extra_args=["--strict"])
    server.start(wait=False)
    assert server.wait_exit(timeout=60) == 1
    server.kill()
    log = server.log()
    assert f"predserve cannot start: --strict: model type(s) not served from their current set: {FOREST}" in log
    assert "predserve ready" not in log and not (workdir / "server.port").exists()


def set_recorded_sklearn(db_path: Path, set_ids: tuple[int, ...], version: str) -> None:
    with closing_db(db_path) as db:
        for set_id in set_ids:
            (text,) = db.execute("SELECT environment FROM prediction_sets WHERE id = ?", (set_id,)).fetchone()
            environment = {**json.loads(text), "sklearn": version}
            db.execute(
                "UPDATE prediction_sets SET environment = ?, sklearn_version = ? WHERE id = ?",
                (json.dumps(environment), version, set_id),
            )


OTHER_SKLEARN = "0.99.0"


@pytest.fixture(scope="module")
def other_version_workdir(baseline: Baseline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sets 2 (iris_classifier's only one) and 3 (iris_forest's current) recorded as trained elsewhere."""
    workdir = baseline.copy(tmp_path_factory.mktemp("other-version"))
    set_recorded_sklearn(workdir / "predictions.db", (2, 3), OTHER_SKLEARN)
    return workdir


def test_version_policy_warn_serves_and_says_so(
    launch: Launch, baseline: Baseline, other_version_workdir: Path
) -> None:
    """Version policy warn, sets recorded under another scikit-learn: served, ListModels shows the mismatch."""
    server = launch(other_version_workdir, extra_args=["--version-policy", "warn"])
    server.start()
    check_invariants(server.db, server.models_dir, acknowledged=baseline.trained, server=server)
    mismatch = f"version mismatch: sklearn {OTHER_SKLEARN} at training, {sklearn.__version__} now"
    with server.client() as client:
        models = {m.model_type: m for m in client.list_models().models}
    assert models[FOREST].status_message == mismatch and models[FOREST].prediction_set_id == 3
    assert models[CLASSIFIER].status_message == mismatch and models[CLASSIFIER].prediction_set_id == 2
    assert server.stop() == 0


def test_version_policy_refuse_does_not_serve(launch: Launch, baseline: Baseline, other_version_workdir: Path) -> None:
    """Version policy refuse, sets recorded under another scikit-learn: not served (fallback or unavailable)."""
    server = launch(other_version_workdir, extra_args=["--version-policy", "refuse"])
    before = dump(server.db)
    server.start()
    check_invariants(
        server.db,
        server.models_dir,
        acknowledged=baseline.trained,
        server=server,
        fallbacks={FOREST: 1, CLASSIFIER: None},
    )
    reason = f"trained in another environment: sklearn {OTHER_SKLEARN} at training, {sklearn.__version__} now"
    with server.client() as client:
        models = {m.model_type: m for m in client.list_models().models}
        with pytest.raises(FailedPreconditionError) as refused:
            client.predict(CLASSIFIER, IRIS_PROBES)
    assert reason in models[FOREST].status_message and "serving older set 1" in models[FOREST].status_message
    assert not models[CLASSIFIER].loaded and reason in models[CLASSIFIER].status_message
    assert refused.value.details == (
        f"model type '{CLASSIFIER}' has no usable model: current set 2 refused: prediction set 2 was {reason}"
    )
    server.kill()
    assert dump(server.db) == before
