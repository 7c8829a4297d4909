"""Compiled forms answer Predict once proven, persisted like artifacts, and never cost an answer.

Real servers on real files: a compiled form is recorded with its proof, shown by ListModels, the set
listing and V2 metadata, answers as the pipeline does, survives a restart, falls back to the pipeline
when its file is damaged, and goes with its set on gc. In process: a runtime that raises at Predict
leaves the pipeline to answer that call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest

from predserve.protos import grpc_predict_v2_pb2 as v2
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc
from predserve.server.app import build_services
from predserve.server.domain import HistoryRow
from predserve.server.services import prediction
from predserve.server.services.training import TrainCommand
from predserve.server.settings import ServerConfig
from tests.support import IRIS_PROBES, ServerProcess, iris_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def train_both(server: ServerProcess) -> None:
    names, rows = iris_rows()
    with server.client() as client:
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
        client.train("iris_forest", dataset="iris", algorithm="random_forest", params={"n_estimators": "30"})


def answers(server: ServerProcess, model_type: str) -> tuple[list[Any], np.ndarray]:
    with server.client() as client:
        response = client.predict(model_type, IRIS_PROBES, include_probabilities=True)
    labels = [str(p.value) for p in response.predictions]
    return labels, np.asarray([list(p.probabilities) for p in response.predictions])


def runtimes(server: ServerProcess) -> dict[str, Any]:
    with server.client() as client:
        return {m.model_type: m for m in client.list_models().models}


def test_a_proven_compiled_form_answers_as_the_pipeline_does(tmp_path: Path) -> None:
    """Compiled forms on, then --runtime sklearn, then on again after a restart: the same answers every time."""
    server = ServerProcess(tmp_path).start()
    try:
        train_both(server)
        served = runtimes(server)
        assert served["iris_classifier"].runtime.answering != "sklearn", served["iris_classifier"]
        with server.client() as client:
            (recorded,) = client.list_prediction_sets("iris_classifier").prediction_sets
        assert recorded.runtime.answering == served["iris_classifier"].runtime.answering
        assert recorded.runtime.rows_checked > 5 and recorded.runtime.max_deviation <= 1e-9
        assert recorded.runtime.library_version
        with grpc.insecure_channel(server.target) as channel:
            metadata = v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                v2.ModelMetadataRequest(name="iris_classifier")
            )
        assert metadata.parameters["runtime"].string_param == recorded.runtime.answering
        compiled = {t: answers(server, t) for t in ("iris_classifier", "iris_forest")}
        server.stop()

        # The same sets answered by their pipelines: identical labels, probabilities within the tolerance.
        server.extra_args = ["--runtime", "sklearn"]
        server.start()
        assert {m.runtime.answering for m in runtimes(server).values()} == {"sklearn"}
        for model_type, (labels, probabilities) in compiled.items():
            reference_labels, reference = answers(server, model_type)
            assert labels == reference_labels
            assert np.max(np.abs(probabilities - reference)) <= 1e-9
        server.stop()

        # And again with runtimes on, after a restart: the compiled forms load, are proven again, and answer.
        server.extra_args = []
        server.start()
        assert runtimes(server)["iris_classifier"].runtime.answering == recorded.runtime.answering
        assert answers(server, "iris_classifier")[0] == compiled["iris_classifier"][0]
    finally:
        server.kill()


def compiled_file(db: Path, model_type: str) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT runtime_path FROM prediction_sets WHERE model_type = ? AND is_current", (model_type,)
        ).fetchone()
    return row[0]


def test_a_damaged_compiled_file_falls_back_to_the_pipeline(tmp_path: Path) -> None:
    """Current compiled form cut to half its size: the pipeline answers, ListModels and the log say why."""
    server = ServerProcess(tmp_path).start()
    try:
        train_both(server)
        before = answers(server, "iris_classifier")
        server.stop()
        name = compiled_file(server.db, "iris_classifier")  # type: ignore[arg-type]
        assert name is not None
        path = server.models_dir / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

        server.start()
        status = runtimes(server)["iris_classifier"]
        assert status.loaded and status.runtime.answering == "sklearn"
        assert "compiled form refused" in status.status_message
        assert answers(server, "iris_classifier")[0] == before[0]
        assert "compiled form refused" in server.log()
    finally:
        server.kill()


def test_a_swapped_compiled_file_is_refused_even_with_its_checksum_recorded(tmp_path: Path) -> None:
    """Compiled form replaced by another set's, its SHA-256 and size recorded too: refused, the pipeline answers."""
    server = ServerProcess(tmp_path).start()
    try:
        train_both(server)
        before = answers(server, "iris_forest")
        server.stop()
        forest = compiled_file(server.db, "iris_forest")
        other = compiled_file(server.db, "iris_classifier")
        assert forest is not None and other is not None
        # Another set's compiled form, its SHA-256 and size recorded too: only the proof can tell.
        stolen = (server.models_dir / other).read_bytes()
        (server.models_dir / forest).write_bytes(stolen)
        with sqlite3.connect(server.db) as conn:
            conn.execute(
                "UPDATE prediction_sets SET runtime_sha256 = ?, runtime_size_bytes = ? WHERE runtime_path = ?",
                (hashlib.sha256(stolen).hexdigest(), len(stolen), forest),
            )
        server.start()
        status = runtimes(server)["iris_forest"]
        assert status.loaded and status.runtime.answering == "sklearn", status
        assert "compiled form" in status.status_message
        assert answers(server, "iris_forest")[0] == before[0]
    finally:
        server.kill()


def test_an_import_gets_a_compiled_form_too(tmp_path: Path) -> None:
    """ImportModel of an outside pipeline with a dataset: it gets a compiled form proven on every row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names, rows = iris_rows()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(np.asarray([f for f, _ in rows]), [t for _, t in rows])
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as client:
            client.ingest("iris", rows, names)
            client.import_model("outside", buffer.getvalue(), dataset="iris")
            (recorded,) = client.list_prediction_sets("outside").prediction_sets
        assert recorded.runtime.answering == "numpy-linear" and recorded.runtime.rows_checked >= len(rows)
        assert runtimes(server)["outside"].runtime.answering == "numpy-linear"
    finally:
        server.kill()


def test_gc_removes_the_compiled_form_with_its_set(tmp_path: Path) -> None:
    """gc --keep 1 after three Trains: the old sets' compiled forms go with their artifacts."""
    server = ServerProcess(tmp_path).start()
    try:
        train_both(server)
        first = compiled_file(server.db, "iris_classifier")  # type: ignore[arg-type]
        with server.client() as client:
            for _ in range(3):
                client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
            assert (server.models_dir / str(first)).exists()
            client.garbage_collect(keep=1)
        assert not (server.models_dir / str(first)).exists()
        assert compiled_file(server.db, "iris_classifier") is not None
    finally:
        server.kill()


class RaisingRuntime:
    name = "raising"
    version = "0"
    most_rows = None

    def predict(self, rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("this runtime cannot answer")

    def predict_proba(self, rows: np.ndarray) -> np.ndarray | None:
        raise RuntimeError("this runtime cannot answer")

    def predict_both(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise RuntimeError("this runtime cannot answer")


def test_a_runtime_that_raises_leaves_the_pipeline_to_answer(tmp_path: Path) -> None:
    """A compiled form that raises at Predict: the pipeline answers that call, and the fallback is counted."""
    services = build_services(ServerConfig(db_path=tmp_path / "r.db", models_dir=tmp_path / "models"))
    names, rows = iris_rows()
    services.history.ingest("iris", names, [HistoryRow(tuple(f), t) for f, t in rows])
    services.training.train(TrainCommand(model_type="m", algorithm="logistic_regression", dataset="iris"))
    model = services.store.current("m")
    expected = model.pipeline.predict(np.asarray(IRIS_PROBES)).tolist()
    services.store.put("m", dataclasses.replace(model, runtime=RaisingRuntime()))
    before = prediction.runtime_fallbacks.value
    result = services.prediction.predict("m", IRIS_PROBES, include_probabilities=True)
    assert result.values == expected and result.probabilities is not None
    assert prediction.runtime_fallbacks.value == before + 1


def forge_reference(server: ServerProcess, model_type: str, shift: float) -> None:
    """Rewrites a set's compiled file with the pipeline's recorded answers moved by `shift`, and records the new
    file's SHA-256 and size, as someone with write access to both and no signing key could."""
    from predserve.server.runtimes.fidelity import Reference, split_reference, with_reference

    name = compiled_file(server.db, model_type)
    assert name is not None
    path = server.models_dir / name
    runtime_data, reference = split_reference(path.read_bytes())
    assert reference is not None
    moved = Reference(
        reference.rows, reference.labels, reference.values + shift, reference.is_classifier, reference.pipeline_sha256
    )
    forged = with_reference(runtime_data, moved)
    path.write_bytes(forged)
    with sqlite3.connect(server.db) as conn:
        conn.execute(
            "UPDATE prediction_sets SET runtime_sha256 = ?, runtime_size_bytes = ? WHERE runtime_path = ?",
            (hashlib.sha256(forged).hexdigest(), len(forged), name),
        )


def test_a_load_proves_the_form_against_the_answers_recorded_with_it(tmp_path: Path) -> None:
    """The compiled file records the pipeline's answers on the proof rows and the artifact that gave them. At load
    the form is proven against those answers (a forged answer is found), unless the libraries changed since the
    fit: then against the pipeline itself, which the forgery cannot fool."""
    from predserve.server.runtimes.fidelity import split_reference

    server = ServerProcess(tmp_path).start()
    try:
        train_both(server)
        before = answers(server, "iris_forest")
        with server.client() as client:
            (recorded,) = client.list_prediction_sets("iris_forest").prediction_sets
        server.stop()
        name = compiled_file(server.db, "iris_forest")
        assert name is not None
        _, reference = split_reference((server.models_dir / name).read_bytes())
        assert reference is not None and reference.pipeline_sha256 == recorded.artifact_sha256
        assert reference.is_classifier and len(reference.rows) == len(reference.values) > 100

        forge_reference(server, "iris_forest", shift=1e-6)
        server.start()
        status = runtimes(server)["iris_forest"]
        assert status.runtime.answering == "sklearn" and "fails its proof again" in status.status_message, status
        assert answers(server, "iris_forest")[0] == before[0]
        server.stop()

        # Recorded as fitted with another scikit-learn: the recorded answers are not trusted, the pipeline is asked.
        with sqlite3.connect(server.db) as conn:
            (environment,) = conn.execute(
                "SELECT environment FROM prediction_sets WHERE runtime_path = ?", (name,)
            ).fetchone()
            conn.execute(
                "UPDATE prediction_sets SET environment = ? WHERE runtime_path = ?",
                (environment.replace('"sklearn": "', '"sklearn": "0.0.'), name),
            )
        server.start()
        status = runtimes(server)["iris_forest"]
        assert status.runtime.answering == "treelite", status
        assert "version mismatch" in status.status_message
        labels, probabilities = answers(server, "iris_forest")
        assert labels == before[0] and np.max(np.abs(probabilities - before[1])) <= 1e-9
    finally:
        server.kill()
