"""Turns a fitted pipeline into the fastest runtime that answers as it does, and stored bytes back into a runtime.

Chosen per estimator family by measurement (2026-12, this repository's dev machine, scikit-learn 1.9.1, one
thread, in process): µs per call for 1 row / 1000 rows, and the max |Δ| of probabilities (classifiers) or values
(regressors) against the pipeline on 1000 resampled rows jittered by ±10%.

recipe (dataset)                          sklearn        chosen                              ONNX Runtime (double)
----------------------------------------  -------------  ----------------------------------  -------------------------
logistic_regression (iris, 3 classes)     412 / 500      numpy     8.8 / 95      Δ 0         12 / 111    Δ 2.2e-16
logistic_regression (breast cancer)       357 / 413      numpy    11.7 / 70      Δ 0         17 / 170    Δ 2.2e-16
ridge (diabetes)                          402 / 444      numpy     6.0 / 30      Δ 0         13 / 82     Δ 5.7e-14
random_forest (iris)                      7672 / 7711    treelite   44 / 11591   Δ 0         12 / 2763   Δ 5e-8
random_forest (breast cancer)             6852 / 10664   treelite   66 / 11583   Δ 0         12 / 3004   Δ 5e-8
random_forest_regressor (diabetes)        5377 / 13230   treelite   48 / 17657   Δ 0         conversion fails
hist_gradient_boosting (iris)             2269* / 20865  treelite   64 / 23872   Δ 0         conversion fails
hist_gradient_boosting (breast cancer)    1562 / 5303    treelite   43 / 11683   Δ 3.3e-16   conversion fails
hist_gradient_boosting_regressor (diab.)  792 / 3429     treelite   41 / 10643   Δ 4e-13     conversion fails

* scikit-learn's HistGradientBoosting predicts with OpenMP threads; its one-row figure ranged 2 to 55 ms here.

So: the linear families are numpy arithmetic of our own (bit-identical, as fast as ONNX or faster, and no
dependency); the tree families are treelite GTIL (bit-identical for forests once rows are rounded to float32 as
scikit-learn's trees round them; boosting within 4e-13, the order the margins are summed in). ONNX is not used:
its forests deviate by 5e-8 even in double (over the 1e-9 tolerance), and skl2onnx 1.20 converts neither
boosting nor forest regressors in double. Treelite is ~100x faster than scikit-learn for one row but slower
from about 500 rows (GTIL walks nodes one row at a time; scikit-learn's HistGradientBoosting predicts with
OpenMP threads), so large batches gain nothing. `fidelity.prove` re-checks every set, whatever these figures say.
"""

from __future__ import annotations

import logging
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from predserve.server.runtimes import linear, trees, typed
from predserve.server.runtimes.base import CompiledForm, Refusal, Runtime
from predserve.server.runtimes.scaling import Standardization
from predserve.server.runtimes.stored import UnstorableClasses

logger = logging.getLogger(__name__)

# The values of server.services.catalog's task names, which this layer may not import (services import it).
CLASSIFICATION = "classification"
REGRESSION = "regression"

# Exact types: a subclass may predict otherwise, and the proof would be the only thing to notice.
_FAMILIES: dict[type, tuple[str, str]] = {
    LogisticRegression: (CLASSIFICATION, linear.FORMAT),
    Ridge: (REGRESSION, linear.FORMAT),
    RandomForestClassifier: (CLASSIFICATION, trees.FORMAT),
    RandomForestRegressor: (REGRESSION, trees.FORMAT),
    HistGradientBoostingClassifier: (CLASSIFICATION, trees.FORMAT),
    HistGradientBoostingRegressor: (REGRESSION, trees.FORMAT),
}


def _split(pipeline: BaseEstimator) -> tuple[StandardScaler | None, BaseEstimator] | Refusal:
    if not isinstance(pipeline, Pipeline):
        return None, pipeline
    steps = [(name, step) for name, step in pipeline.steps if step is not None and step != "passthrough"]
    if not steps:
        return Refusal("the pipeline has no steps")
    *before, (estimator_name, estimator) = steps
    if len(before) > 1 or (before and type(before[0][1]) is not StandardScaler):
        others = ", ".join(f"{name} ({type(step).__name__})" for name, step in before)
        return Refusal(f"no compiled form for steps before the estimator other than one StandardScaler: {others}")
    scaler = before[0][1] if before else None
    return scaler, estimator


def compile_pipeline(pipeline: BaseEstimator, task: str) -> CompiledForm | Refusal:
    """The compiled form of a fitted pipeline (optional StandardScaler, then a catalog estimator), or why none."""
    split = _split(pipeline)
    if isinstance(split, Refusal):
        return split
    scaler, estimator = split
    family = _FAMILIES.get(type(estimator))
    if family is None:
        return Refusal(f"no compiled form for estimator {type(estimator).__name__}")
    family_task, format_name = family
    if family_task != task:
        return Refusal(f"{type(estimator).__name__} is a {family_task} estimator, the set's task is {task}")
    try:
        standardization = Standardization.of(scaler) if scaler is not None else None
        runtime: linear.LinearRuntime | trees.TreeliteRuntime
        if format_name == linear.FORMAT:
            if isinstance(estimator, Ridge) and estimator.coef_.ndim != 1:
                return Refusal(f"no compiled form for Ridge with {estimator.coef_.shape[0]} targets")
            runtime = linear.LinearRuntime.of(estimator, standardization)
        else:
            runtime = trees.TreeliteRuntime.of(estimator, standardization)
        data = runtime.to_bytes()
    except (trees.UnsupportedTrees, UnstorableClasses) as exc:
        return Refusal(f"no compiled form for this {type(estimator).__name__}: {exc}")
    except Exception as exc:  # a conversion failing is a reason to serve the pipeline, never a failed registration
        logger.warning("compiling %s failed", type(estimator).__name__, exc_info=True)
        return Refusal(f"compiling {type(estimator).__name__} failed: {type(exc).__name__}: {exc}")
    return CompiledForm(runtime, data)


def load_runtime(name: str, data: bytes) -> Runtime:
    """The runtime `CompiledForm.data` stored, by the runtime's name; ValueError for unknown names or corrupt data."""
    if name == linear.FORMAT:
        return linear.LinearRuntime.from_bytes(data)
    if name == trees.FORMAT:
        return trees.TreeliteRuntime.from_bytes(data)
    if name.startswith(typed.PREFIX):  # a typed pipeline's: its own bytes name the estimator's form inside
        runtime: Any = typed.TableRuntime.from_bytes(data)
        if runtime.name != name:
            raise ValueError(f"runtime data of {runtime.name!r} recorded as {name!r}")
        return runtime  # type: ignore[no-any-return]
    raise ValueError(f"unknown runtime {name!r}; known: {linear.FORMAT}, {trees.FORMAT}, {typed.PREFIX}*")
