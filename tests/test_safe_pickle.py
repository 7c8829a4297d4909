"""The allow-list unpickler in-process: it loads everything the server trains and nothing that runs code."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from predserve.server.config import parse_config
from predserve.server.services.catalog import CATALOG, CLASSIFICATION
from predserve.server.storage.safe_pickle import ForbiddenGlobal, load_restricted


class Reduces:
    """An object whose pickle calls `function(*args)` on load."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def dumped(value: Any, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_catalog_recipe_loads_and_answers_the_same(name: str) -> None:
    recipe = CATALOG[name]
    bunch = load_iris() if recipe.task == CLASSIFICATION else load_diabetes()
    pipeline = recipe.build({}, seed=0).fit(bunch.data, bunch.target)
    for data in (dumped(pipeline), dumped(pipeline, compress=3)):
        loaded = load_restricted(data)
        assert np.array_equal(loaded.predict(bunch.data), pipeline.predict(bunch.data))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_models_the_tests_import_load_under_every_pickle_protocol(protocol: int) -> None:
    iris = load_iris()
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)[iris.target]
    for model in (
        DummyClassifier().fit(iris.data, labels),
        Ridge().fit(iris.data, iris.target),
        Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))]).fit(iris.data, labels),
    ):
        loaded = load_restricted(dumped(model, protocol=protocol))
        assert list(loaded.predict(iris.data)) == list(model.predict(iris.data))


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (Reduces(exec, "open('MARKER', 'w')"), "builtins.exec"),
        (Reduces(builtins.eval, "open('MARKER', 'w')"), "builtins.eval"),
        (Reduces(os.system, "touch MARKER"), f"{os.system.__module__}.system"),
        (Reduces(subprocess.Popen, ["touch", "MARKER"]), "subprocess.Popen"),
        (Reduces(np.load, "MARKER", None, True), "numpy.load"),
        (Reduces(getattr, Ridge, "fit"), "builtins.getattr"),
    ],
    ids=["exec", "eval", "os.system", "Popen", "numpy.load", "getattr"],
)
def test_a_payload_is_refused_naming_its_global_before_it_runs(
    payload: Reduces, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ForbiddenGlobal) as refused:
        load_restricted(dumped(payload))
    assert refused.value.global_name == named
    assert str(refused.value).startswith(f"it names {named}, which ")
    assert not (tmp_path / "MARKER").exists()


def test_a_dotted_name_cannot_walk_to_a_function() -> None:
    # Protocol 4 lets a name walk attributes: numpy.os.system would reach os.system through numpy.
    data = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x05numpy\x8c\tos.system\x93\x8c\x04true\x85R."
    with pytest.raises(ForbiddenGlobal, match=r"it names numpy\.os\.system, which is not on the allow-list"):
        load_restricted(data)


def test_a_function_of_an_allowed_package_is_refused() -> None:
    with pytest.raises(ForbiddenGlobal, match=r"numpy\.sum, which is a function, not a class"):
        load_restricted(dumped(Reduces(np.sum, 1)))
    with pytest.raises(ForbiddenGlobal, match=r"numpy\.linalg\.norm, which is a function, not a class"):
        load_restricted(dumped(FunctionTransformer(func=np.linalg.norm)))


def test_state_is_never_set_on_a_named_global() -> None:
    # GLOBAL sklearn.pipeline.Pipeline, {'predict': None}, BUILD: would rewrite the class for the process.
    data = b"\x80\x02csklearn.pipeline\nPipeline\n}X\x07\x00\x00\x00predictN\x73b."
    with pytest.raises(pickle.UnpicklingError, match="applies BUILD to sklearn.pipeline.Pipeline"):
        load_restricted(data)
    assert callable(Pipeline.predict)


def test_a_trusted_module_s_classes_load_and_others_still_do_not() -> None:
    from tests.fixtures_trusted.transformers import Clip

    iris = load_iris()
    pipeline = Pipeline([("clip", Clip(0.0, 5.0)), ("model", Ridge())]).fit(iris.data, iris.target)
    data = dumped(pipeline)
    with pytest.raises(ForbiddenGlobal, match="tests.fixtures_trusted.transformers.Clip, which is not on the allow"):
        load_restricted(data)
    loaded = load_restricted(data, ("tests.fixtures_trusted",))
    assert np.array_equal(loaded.predict(iris.data), pipeline.predict(iris.data))
    with pytest.raises(ForbiddenGlobal, match="builtins.exec"):
        load_restricted(dumped([pipeline, Reduces(exec, "1")]), ("tests.fixtures_trusted",))


def test_trusted_modules_come_comma_separated_from_the_flag_or_the_variable() -> None:
    assert parse_config([], env={}).trusted_modules == ()
    assert parse_config([], env={"PREDSERVE_TRUSTED_MODULES": "a.b, c"}).trusted_modules == ("a.b", "c")
    assert parse_config(["--trusted-module", "x"], env={"PREDSERVE_TRUSTED_MODULES": "a"}).trusted_modules == ("x",)
    with pytest.raises(SystemExit):
        parse_config(["--trusted-module", "os;rm"], env={})
