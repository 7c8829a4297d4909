"""The catalog of trainable recipes: named scikit-learn Pipelines and their hyper-parameters."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils._param_validation import InvalidParameterError

from predserve.server.domain import ColumnType, Schema
from predserve.server.errors import InvalidArgument

CLASSIFICATION = "classification"
REGRESSION = "regression"
ESTIMATOR_STEP = "model"
PREPARE_STEP = "prepare"  # a typed pipeline's ColumnTransformer
# What a missing string becomes before encoding: a category of its own, seen in training like any other.
MISSING_CATEGORY = "missing"

# The names of the metrics a prediction set records; clients and dashboards read them by name.
ACCURACY = "accuracy"
F1_MACRO = "f1_macro"
R2 = "r2"
MAE = "mae"
RMSE = "rmse"
HOLDOUT_ROWS = "holdout_rows"  # rows held out of the fit and scored (Train)
EVALUATED_ROWS = "evaluated_rows"  # rows of the dataset given at import, all scored
# The held-out metric that decides "at least as good", per task; higher is better for both.
PRIMARY_METRIC = {CLASSIFICATION: ACCURACY, REGRESSION: R2}


@dataclass(frozen=True)
class Recipe:
    name: str
    task: str
    make_estimator: Callable[[], BaseEstimator]
    scaled: bool
    # Trees that split on a missing value themselves (HistGradientBoosting): their numbers are not imputed.
    native_missing: bool = False

    def default_params(self) -> dict[str, Any]:
        return self.make_estimator().get_params(deep=False)

    def build(self, params: Mapping[str, Any], seed: int, schema: Schema | None = None) -> Pipeline:
        """The recipe's pipeline: for a float64 matrix as since Phase 4, or, given a schema that takes a
        DataFrame, with the preprocessing its columns need in front (see `prepare`)."""
        estimator = self.make_estimator()
        settable = estimator.get_params(deep=False)
        if "random_state" in settable and "random_state" not in params:
            estimator.set_params(random_state=seed)
        estimator.set_params(**params)
        steps: list[tuple[str, Any]]
        if schema is not None and not schema.numeric:
            steps = [(PREPARE_STEP, self.prepare(schema))]
        else:
            steps = [("scale", StandardScaler())] if self.scaled else []
        steps.append((ESTIMATOR_STEP, estimator))
        return Pipeline(steps)

    def prepare(self, schema: Schema) -> ColumnTransformer:
        """Columns chosen by name. Numbers: the median for a missing value (HistGradientBoosting splits on it
        natively instead), scaled for the linear recipes. Strings: a missing value is a category of its own;
        one-hot for the linear recipes, unknown categories ignored (all zeros); ordinal codes for the trees,
        an unknown category coded -1. HistGradientBoosting's native categorical mode is not used: it pickles a
        functools.partial, which the artifact allow-list refuses, and caps a column at 255 categories."""
        numbers = [c.name for c in schema.columns if c.type is ColumnType.NUMBER]
        strings = [c.name for c in schema.columns if c.type is ColumnType.STRING]
        parts: list[tuple[str, Any, list[str]]] = []
        if numbers:
            parts.append(("numbers", self._number_steps(), numbers))
        if strings:
            parts.append(("strings", self._string_steps(), strings))
        # Every column either way: a column the schema names and no part selects would be dropped silently.
        return ColumnTransformer(parts, remainder="drop")

    def _number_steps(self) -> Any:
        if self.native_missing:
            return "passthrough"
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
        if self.scaled:
            steps.append(("scale", StandardScaler()))
        return Pipeline(steps)

    def _string_steps(self) -> Pipeline:
        # A missing string arrives as NaN (pandas' marker: read_csv, the str dtype) or as None (an object column,
        # as load_table gives): SimpleImputer matches one marker per instance, and the NaN one must come first
        # (missing_values=None refuses NaN), so two make both the same category.
        impute = SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)
        impute_none = SimpleImputer(missing_values=None, strategy="constant", fill_value=MISSING_CATEGORY)
        encode: Any = (
            OneHotEncoder(handle_unknown="ignore")
            if self.scaled
            else OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        )
        return Pipeline([("impute", impute), ("impute_none", impute_none), ("encode", encode)])


CATALOG: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("logistic_regression", CLASSIFICATION, lambda: LogisticRegression(max_iter=1000), True),
        Recipe("random_forest", CLASSIFICATION, lambda: RandomForestClassifier(n_estimators=100), False),
        Recipe("hist_gradient_boosting", CLASSIFICATION, HistGradientBoostingClassifier, False, native_missing=True),
        Recipe("ridge", REGRESSION, Ridge, True),
        Recipe("random_forest_regressor", REGRESSION, lambda: RandomForestRegressor(n_estimators=100), False),
        Recipe(
            "hist_gradient_boosting_regressor", REGRESSION, HistGradientBoostingRegressor, False, native_missing=True
        ),
    )
}


def find_recipe(algorithm: str) -> Recipe:
    recipe = CATALOG.get(algorithm)
    if recipe is None:
        raise InvalidArgument(f"unknown algorithm {algorithm!r}; choose one of: {', '.join(sorted(CATALOG))}")
    return recipe


def parse_params(recipe: Recipe, raw: Mapping[str, str]) -> dict[str, Any]:
    """Turns text hyper-parameters into typed ones and has scikit-learn validate them before any fit."""
    defaults = recipe.default_params()
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise InvalidArgument(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for algorithm {recipe.name}; "
            f"known: {', '.join(sorted(defaults))}"
        )
    params = {name: _parse_value(name, text) for name, text in raw.items()}
    estimator = recipe.make_estimator().set_params(**params)
    try:
        estimator._validate_params()  # scikit-learn's own constraint checks, run without fitting
    except InvalidParameterError as exc:
        raise InvalidArgument(f"invalid parameter for algorithm {recipe.name}: {exc}") from exc
    return params


def _parse_value(name: str, text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = json.loads(text)
    except ValueError:
        return text
    # JSON has no infinity, but json.loads("1e999") overflows to one; "inf" itself stays text and is refused.
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"parameter {name} = {text!r} is not a finite number")
    return value if isinstance(value, (int, float, str)) else text
