"""Unit tests of the services, in process: real SQLite in tmp_path, a fake only where a fault is injected."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from predserve.server.app import build_services
from predserve.server.domain import ArtifactInfo, HistoryRow
from predserve.server.errors import ArtifactRejected, InvalidArgument, StorageError, Unavailable
from predserve.server.model_store import LoadedModel, ModelStore, UnavailableModel
from predserve.server.services.catalog import CATALOG, REGRESSION, find_recipe, parse_params
from predserve.server.services.loading import ModelLoader
from predserve.server.services.training import TrainCommand
from predserve.server.settings import ServerConfig
from predserve.server.storage.artifacts import ArtifactStore
from tests.support import IRIS_PROBES, diabetes_rows, iris_rows


class Stack:
    """The services as the bootstrap builds them (server.app.build_services), in process, with an
    artifact store or model store of the test's own where a fault is injected."""

    def __init__(
        self,
        root: Path,
        artifacts: ArtifactStore | None = None,
        busy_timeout: float = 5.0,
        pinned_budget: int = 512 * 1024 * 1024,
    ) -> None:
        config = ServerConfig(db_path=root / "unit.db", models_dir=root / "models", busy_timeout_seconds=busy_timeout)
        services = build_services(config, artifacts=artifacts, store=ModelStore(pinned_budget_bytes=pinned_budget))
        self.database = services.database
        self.artifacts = services.artifacts
        self.sets = services.sets
        self.history = services.history
        self.loader = services.loader
        self.store = services.store
        self.training = services.training
        self.prediction = services.prediction

    def train(self, algorithm: str = "logistic_regression", model_type: str = "iris_classifier", **params: str) -> int:
        command = TrainCommand(model_type=model_type, algorithm=algorithm, dataset="iris", params=params)
        return self.training.train(command).model.record.id


def iris_stack(root: Path, **options: Any) -> Stack:
    stack = Stack(root, **options)
    names, rows = iris_rows()
    stack.history.ingest("iris", names, [HistoryRow(tuple(f), t) for f, t in rows])
    return stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield iris_stack(tmp_path)


class FailingWrites(ArtifactStore):
    """Writes normally until armed, then every write fails."""

    armed = False

    def write(self, pipeline: Any, model_type: str) -> tuple[ArtifactInfo, bytes]:
        if self.armed:
            raise StorageError("could not write the model artifact: injected failure")
        return super().write(pipeline, model_type)


class WritesAnotherModel(ArtifactStore):
    """Once given another pipeline, writes it instead of the one trained: the self-check must catch it."""

    other: Any = None

    def write(self, pipeline: Any, model_type: str) -> tuple[ArtifactInfo, bytes]:
        return super().write(pipeline if self.other is None else self.other, model_type)


def assert_current(stack: Stack, set_id: int) -> None:
    assert [r.id for r in stack.sets.current_sets()] == [set_id]
    assert stack.prediction.predict("iris_classifier", IRIS_PROBES).prediction_set_id == set_id


def test_training_then_prediction_in_process(stack: Stack) -> None:
    set_id = stack.train()
    result = stack.prediction.predict("iris_classifier", np.asarray(IRIS_PROBES), include_probabilities=True)
    assert result.prediction_set_id == set_id
    assert result.values[:2] == [0, 2]
    assert result.probabilities is not None and result.probabilities.shape == (4, 3)
    record = stack.sets.get(set_id)
    assert record is not None and record.artifact is not None
    assert (stack.artifacts.root / record.artifact.relative_path).stat().st_size == record.artifact.size_bytes
    assert record.environment["sklearn"] == record.sklearn_version
    assert len(record.self_check.inputs) == 5 if record.self_check else False


def test_a_failed_artifact_write_keeps_the_previous_model(tmp_path: Path) -> None:
    failing = FailingWrites(tmp_path / "models")
    stack = iris_stack(tmp_path, artifacts=failing)
    first = stack.train()
    failing.armed = True
    with pytest.raises(StorageError, match="injected failure"):
        stack.train("random_forest")
    assert_current(stack, first)
    assert len(stack.sets.for_model_type("iris_classifier")) == 1


def test_a_locked_database_at_commit_keeps_the_previous_model_and_no_file(tmp_path: Path) -> None:
    stack = iris_stack(tmp_path, busy_timeout=0.2)
    first = stack.train()
    holder = sqlite3.connect(stack.database.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Unavailable, match="busy"):
            stack.train("random_forest")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_current(stack, first)
    assert len(list(stack.artifacts.root.glob("*.joblib"))) == 1  # the unregistered file was removed


def test_an_artifact_that_fails_its_self_check_is_never_registered(tmp_path: Path) -> None:
    writes_another = WritesAnotherModel(tmp_path / "models")
    stack = iris_stack(tmp_path, artifacts=writes_another)
    first = stack.train()
    current = stack.store.current("iris_classifier").pipeline
    # A pipeline that answers differently from the one about to be fitted: a depth-1 stump.
    stump = find_recipe("random_forest").build({"n_estimators": 1, "max_depth": 1}, 1)
    x = np.asarray(IRIS_PROBES * 5)
    stump.fit(x, [0, 1, 2, 1] * 5)
    assert (stump.predict(x) != current.predict(x)).any()
    writes_another.other = stump
    with pytest.raises(ArtifactRejected, match="self-check"):
        stack.train("logistic_regression", C="0.5")
    assert_current(stack, first)
    assert len(list(stack.artifacts.root.glob("*.joblib"))) == 1  # the rejected file was removed


@pytest.mark.parametrize("algorithm", sorted(CATALOG))
def test_every_recipe_trains_persists_and_reloads(tmp_path: Path, algorithm: str) -> None:
    stack = Stack(tmp_path)
    recipe = CATALOG[algorithm]
    if recipe.task == REGRESSION:
        rows = diabetes_rows()[:120]
    else:
        rows = [(f, t) for f, t in iris_rows()[1]]
    stack.history.ingest("iris", [], [HistoryRow(tuple(f), t) for f, t in rows])
    params = {"n_estimators": "10"} if "n_estimators" in recipe.default_params() else {}
    set_id = stack.train(algorithm, model_type="m", **params)

    fresh = ModelStore()
    ModelLoader(stack.artifacts, stack.sets).load_current_models(fresh)
    model = fresh.current("m")
    assert isinstance(model, LoadedModel) and model.record.id == set_id
    probe = np.asarray([rows[0][0]])
    assert model.pipeline.predict(probe).tolist() == stack.store.current("m").pipeline.predict(probe).tolist()


def test_parameters_are_typed_and_validated_before_fitting() -> None:
    recipe = find_recipe("random_forest")
    assert parse_params(recipe, {"n_estimators": "50", "max_depth": "none", "bootstrap": "false"}) == {
        "n_estimators": 50,
        "max_depth": None,
        "bootstrap": False,
    }
    assert parse_params(find_recipe("logistic_regression"), {"class_weight": "balanced"}) == {
        "class_weight": "balanced"
    }
    with pytest.raises(InvalidArgument, match="n_estimators"):
        parse_params(recipe, {"n_estimators": "0"})
    with pytest.raises(InvalidArgument, match="unknown parameter"):
        parse_params(recipe, {"depth": "3"})


def test_loader_marks_a_type_unavailable_when_no_set_verifies(stack: Stack) -> None:
    set_id = stack.train()
    record = stack.sets.get(set_id)
    assert record is not None and record.artifact is not None
    (stack.artifacts.root / record.artifact.relative_path).write_bytes(b"not a pickle")
    fresh = ModelStore()
    stack.loader.load_current_models(fresh)
    slot = fresh.slots()["iris_classifier"]
    assert isinstance(slot, UnavailableModel)
    assert f"current set {set_id} refused" in slot.reason and "bytes" in slot.reason


def test_pinned_sets_are_cached_within_a_memory_bound(tmp_path: Path) -> None:
    stack = iris_stack(tmp_path, pinned_budget=1)  # smaller than any artifact: only the newest pin stays
    ids = [stack.train(), stack.train("random_forest", n_estimators="5"), stack.train(), stack.train()]
    for set_id in ids[:3]:
        assert stack.prediction.predict("iris_classifier", IRIS_PROBES, set_id).prediction_set_id == set_id
    assert stack.store.pinned_ids() == [ids[2]]

    (tmp_path / "roomy").mkdir()
    roomy = iris_stack(tmp_path / "roomy")
    ids = [roomy.train(), roomy.train(), roomy.train()]
    for set_id in ids[:2]:
        roomy.prediction.predict("iris_classifier", IRIS_PROBES, set_id)
    assert roomy.store.pinned_ids() == ids[:2]
