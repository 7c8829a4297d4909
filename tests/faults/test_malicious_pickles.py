"""Malicious pickles never run: each payload tries to create a marker file when unpickled.

Documented behaviour (README, "Trust model of the artifacts"): every load unpickles through an allow-list,
so ImportModel refuses such a file with FAILED_PRECONDITION naming the global, and a current artifact
holding one (checksum and size recorded to match) is refused at start-up like any broken artifact: the
server falls back to the older set. In every case the marker never appears and the server keeps serving.
"""

from __future__ import annotations

import builtins
import io
import os
import shlex
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline

from predserve.client.library import FailedPreconditionError
from tests.faults.baseline import CLASSIFIER, FOREST, Baseline, Launch
from tests.invariants import sha256_of
from tests.support import IRIS_PROBES, ServerProcess

pytestmark = [pytest.mark.faults]

MARKER = "payload-ran"


class Reduces:
    """Unpickles as `function(*args)`: the classic pickle payload."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def fitted_classifier() -> LogisticRegression:
    iris = load_iris()
    return LogisticRegression(max_iter=500).fit(iris.data, iris.target)


def touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


def outside_the_probe(marker: Path) -> Any:
    """A real classifier that behaves in the probe and, anywhere else, leaves a marker and kills the process."""
    model = fitted_classifier()
    code = f"import os, sys\nif 'import_probe' not in ' '.join(sys.argv):\n    {touch_code(marker)}\n    os._exit(7)\n"
    model.loaded_hook_ = Reduces(exec, code)
    return model


def nested(marker: Path) -> Any:
    """A real fitted classifier whose attribute holds the payload."""
    model = fitted_classifier()
    model.coef_info_ = {"note": Reduces(builtins.eval, touch_code(marker))}
    return model


# name -> (what the file holds, the global the refusal must name)
PAYLOADS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "exec": (lambda marker: Reduces(exec, touch_code(marker)), "builtins.exec"),
    "os.system": (lambda marker: Reduces(os.system, f"touch {shlex.quote(str(marker))}"), f"{os.name}.system"),
    "subprocess.Popen": (lambda marker: Reduces(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
    "builtins.eval": (lambda marker: Reduces(builtins.eval, touch_code(marker)), "builtins.eval"),
    "nested_in_an_estimator": (nested, "builtins.eval"),
    "only_outside_the_probe": (outside_the_probe, "builtins.exec"),
}


def dumped(value: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue()


def refusal(named: str) -> str:
    return f"it names {named}, which is not on the allow-list (add its module with --trusted-module if you trust it)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for every import case: each must leave it serving for the next."""
    process = ServerProcess(tmp_path_factory.mktemp("malicious-imports")).start()
    yield process
    process.kill()


@pytest.mark.parametrize("case", list(PAYLOADS))
def test_import_refuses_a_malicious_pickle_naming_its_global(
    server: ServerProcess, tmp_path: Path, case: str, record_property: Callable[[str, object], None]
) -> None:
    """ImportModel of a pickle whose payload runs on load: FAILED_PRECONDITION naming the global, nothing ran."""
    record_property("fault", f"ImportModel of a pickle with a {case} payload: refused naming it, nothing ran")
    make, named = PAYLOADS[case]
    marker = tmp_path / MARKER
    with server.client() as client:
        with pytest.raises(FailedPreconditionError) as refused:
            client.import_model("evil", dumped(make(marker)))
        assert refused.value.details == f"the artifact cannot be served: it does not unpickle: {refusal(named)}"
        assert client.health() == "SERVING"
        assert "evil" not in [m.model_type for m in client.list_models().models]
    assert not marker.exists()
    assert server.process is not None and server.process.poll() is None


def put_as_current_forest(workdir: Path, data: bytes) -> None:
    """The file becomes set 3's artifact, its SHA-256 and size recorded: only the allow-list can refuse it."""
    with sqlite3.connect(workdir / "predictions.db", isolation_level=None) as db:
        (path,) = db.execute("SELECT model_artifact_path FROM prediction_sets WHERE id = 3").fetchone()
        artifact = workdir / "models" / path
        artifact.write_bytes(data)
        db.execute(
            "UPDATE prediction_sets SET artifact_sha256 = ?, artifact_size_bytes = ? WHERE id = 3",
            (sha256_of(artifact), artifact.stat().st_size),
        )
    db.close()


@pytest.mark.parametrize("case", ["only_outside_the_probe", "nested_in_an_estimator", "os.system"])
def test_start_up_refuses_a_malicious_current_artifact_and_falls_back(
    launch: Launch, baseline: Baseline, tmp_path: Path, case: str, record_property: Callable[[str, object], None]
) -> None:
    """Start-up with a malicious current iris_forest artifact (checksum recorded): falls back, nothing ran."""
    record_property("fault", f"current iris_forest artifact holds a {case} payload, checksum recorded: falls back")
    make, named = PAYLOADS[case]
    marker = tmp_path / MARKER
    workdir = baseline.copy(tmp_path)
    put_as_current_forest(workdir, dumped(make(marker)))

    server = launch(workdir).start()
    with server.client() as client:
        (forest,) = [m for m in client.list_models().models if m.model_type == FOREST]
        assert forest.status_message == (
            f"FALLBACK: current set 3 refused (artifact of prediction set 3 does not unpickle: {refusal(named)}); "
            "serving older set 1"
        )
        assert client.predict(FOREST, IRIS_PROBES).prediction_set_id == 1
        assert client.predict(CLASSIFIER, IRIS_PROBES).prediction_set_id == 2
        with pytest.raises(FailedPreconditionError) as pinned:
            client.predict(FOREST, IRIS_PROBES, prediction_set_id=3)
        assert refusal(named) in pinned.value.details
    assert not marker.exists()
    assert f"REFUSED current artifact of model type {FOREST} (set 3)" in server.log()
    assert server.stop() == 0


def test_a_trusted_module_s_transformer_imports_and_loads_at_start_up(
    launch: Launch, server: ServerProcess, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """A pipeline with a custom transformer: refused unless its module is named with --trusted-module."""
    record_property("fault", "a custom transformer's class: refused by default, served with --trusted-module")
    from tests.fixtures_trusted.transformers import Clip

    iris = load_iris()
    pipeline = Pipeline([("clip", Clip(0.0, 5.0)), ("model", Ridge())]).fit(iris.data, iris.target)
    data = dumped(pipeline)
    with server.client() as client, pytest.raises(FailedPreconditionError) as refused:
        client.import_model("clipped", data)
    assert refusal("tests.fixtures_trusted.transformers.Clip") in refused.value.details

    trusting = launch(tmp_path, extra_args=["--trusted-module", "tests.fixtures_trusted"]).start()
    with trusting.client() as client:
        set_id = client.import_model("clipped", data).prediction_set_id
        answer = client.predict("clipped", IRIS_PROBES)
    assert trusting.stop() == 0
    trusting.env = {"PREDSERVE_TRUSTED_MODULES": "tests.fixtures_trusted"}  # the variable works at start-up too
    trusting.start()
    with trusting.client() as client:
        again = client.predict("clipped", IRIS_PROBES)
    assert again.prediction_set_id == answer.prediction_set_id == set_id
    assert again.predictions == answer.predictions and len(answer.predictions) == len(IRIS_PROBES)
    assert trusting.stop() == 0


@pytest.mark.parametrize(
    ("hostile", "message"),
    [
        ("ExitsWhenLoaded", "the probe process loading the artifact died (exit status 3); refused"),
        ("HangsWhenLoaded", "loading the artifact took longer than 3s in the probe process; refused"),
    ],
)
def test_the_probe_process_still_stops_trusted_code_that_crashes_or_hangs(
    launch: Launch, tmp_path: Path, hostile: str, message: str, record_property: Callable[[str, object], None]
) -> None:
    """A trusted module's class that exits or hangs when unpickled: the probe dies or times out, the server serves."""
    record_property("fault", f"ImportModel of a trusted class that {hostile[:-10].lower()} on load: probe stops it")
    from tests.fixtures_trusted import hostile as module

    trusting = launch(
        tmp_path, extra_args=["--trusted-module", "tests.fixtures_trusted", "--import-timeout", "3"]
    ).start()
    with trusting.client() as client:
        with pytest.raises(FailedPreconditionError) as refused:
            client.import_model("hostile", dumped(getattr(module, hostile)()))
        assert refused.value.details == message
        assert client.health() == "SERVING"
    assert trusting.stop() == 0


def test_a_poisoned_import_is_refused_and_an_unrelated_model_answers_as_before(
    launch: Launch, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The outside tester's attack: an imported pipeline whose object array's nested stream sets
    LogitLink.inverse = numpy.negative; a binary HistGradientBoosting's 400-row probabilities then went
    negative. Refused now, and the other model's answers are unchanged to the bit."""
    record_property("fault", "ImportModel of a pipeline setting a scikit-learn class attribute from an object array")
    from sklearn.datasets import load_breast_cancer

    from tests.poison import poisoned_inside_an_object_array

    cancer = load_breast_cancer()
    rows = [(list(map(float, x)), int(y)) for x, y in zip(cancer.data, cancer.target, strict=True)]
    probes = [features for features, _ in rows[:400]]
    server = launch(tmp_path).start()
    with server.client() as client:
        client.ingest("cancer", rows, [f"f{i}" for i in range(cancer.data.shape[1])])
        client.train("cancer_boost", dataset="cancer", algorithm="hist_gradient_boosting", params={"max_iter": 20})
        before = client.predict("cancer_boost", probes, include_probabilities=True)
        with pytest.raises(FailedPreconditionError) as refused:
            client.import_model("evil", poisoned_inside_an_object_array())
        assert "it applies BUILD to sklearn._loss.link.LogitLink" in refused.value.details
        after = client.predict("cancer_boost", probes, include_probabilities=True)
        assert "evil" not in [m.model_type for m in client.list_models().models]
    assert list(after.predictions) == list(before.predictions)
    assert all(0.0 <= p <= 1.0 for prediction in after.predictions for p in prediction.probabilities)
