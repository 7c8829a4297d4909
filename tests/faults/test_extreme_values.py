"""The outside tester's extreme-value battery: finite rows such as 1e308 that scikit-learn refuses once a scaler makes
them infinite, or once trees cast them past float32. Compiled forms answered them (NaN probabilities, infinite
values, labels from the last leaf); now every Predict, one row or 301 rows (which the pipeline answers), gives the
pipeline's answer or its refusal: INVALID_ARGUMENT naming the row and the feature."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

from predserve.client.library import InvalidInput
from predserve.server.services.catalog import CATALOG, CLASSIFICATION
from tests.support import ServerProcess, diabetes_rows, iris_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EXTREMES = (1e308, -1e308, 5e307, 1e300, -1e250, 1e200, 3.5e38, -3.5e38, 3.4e38, 1e39)
SMALL = {
    "random_forest": {"n_estimators": "20"},
    "random_forest_regressor": {"n_estimators": "20"},
    "hist_gradient_boosting": {"max_iter": "20"},
    "hist_gradient_boosting_regressor": {"max_iter": "20"},
}


def battery(data: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` real rows with one or two features replaced by an extreme value."""
    rng = np.random.default_rng(seed)
    rows = data[rng.integers(len(data), size=count)].copy()
    for row in rows:
        for feature in rng.choice(data.shape[1], size=rng.integers(1, 3), replace=False):
            row[feature] = rng.choice(EXTREMES)
    return rows


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    """One server with a set of every catalog recipe, and each set's pipeline loaded here from its artifact."""
    workdir = tmp_path_factory.mktemp("extreme-values")
    server = ServerProcess(workdir).start()
    try:
        names, rows = iris_rows()
        with server.client() as client:
            client.ingest("iris", rows, names)
            client.ingest("diabetes", diabetes_rows(), [f"f{i}" for i in range(10)])
            for name, recipe in CATALOG.items():
                dataset = "iris" if recipe.task == CLASSIFICATION else "diabetes"
                client.train(name, dataset=dataset, algorithm=name, params=SMALL.get(name, {}))
        with sqlite3.connect(workdir / "predictions.db") as db:
            paths = dict(db.execute("SELECT model_type, model_artifact_path FROM prediction_sets WHERE is_current"))
        db.close()
        yield server, {name: joblib.load(workdir / "models" / path) for name, path in paths.items()}
    finally:
        server.kill()


def pipeline_answer(pipeline: Any, rows: np.ndarray, classifier: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """What the pipeline itself answers (labels, probabilities or values), or None where it refuses."""
    try:
        labels = np.asarray(pipeline.predict(rows))
        return labels, np.asarray(pipeline.predict_proba(rows) if classifier else labels, dtype=float)
    except ValueError:
        return None


def assert_same(server: ServerProcess, name: str, pipeline: Any, rows: np.ndarray, refused_row: int) -> str:
    classifier = CATALOG[name].task == CLASSIFICATION
    expected = pipeline_answer(pipeline, rows, classifier)
    with server.client() as client:
        if expected is None:
            with pytest.raises(InvalidInput) as refused:
                client.predict(name, rows.tolist(), include_probabilities=classifier)
            assert f"row {refused_row}, feature " in refused.value.details
            assert "is outside what the pipeline accepts" in refused.value.details
            return "refused"
        response = client.predict(name, rows.tolist(), include_probabilities=classifier)
    labels, values = expected
    served_values = [getattr(p.value, p.value.WhichOneof("value")) for p in response.predictions]
    if classifier:
        assert served_values == labels.tolist()
        got = np.array([list(p.probabilities) for p in response.predictions])
    else:
        got = np.array(served_values, dtype=float)
    np.testing.assert_allclose(got, values, rtol=0, atol=1e-9, equal_nan=True)
    return "answered"


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_one_row_calls_answer_or_refuse_as_the_pipeline_does(served: tuple[ServerProcess, Any], name: str) -> None:
    server, pipelines = served
    data = load_iris().data if CATALOG[name].task == CLASSIFICATION else load_diabetes().data
    outcomes = [assert_same(server, name, pipelines[name], row.reshape(1, -1), 0) for row in battery(data, 200, 1)]
    if not name.startswith("hist_gradient_boosting"):  # boosting bins float64 and takes every finite row
        assert outcomes.count("refused") > 0, outcomes


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_301_row_calls_answer_or_refuse_as_the_pipeline_does(served: tuple[ServerProcess, Any], name: str) -> None:
    server, pipelines = served
    data = load_iris().data if CATALOG[name].task == CLASSIFICATION else load_diabetes().data
    ordinary = data[np.random.default_rng(2).integers(len(data), size=300)]
    for row in battery(data, 25, 3):
        assert_same(server, name, pipelines[name], np.vstack([ordinary, row]), 300)
