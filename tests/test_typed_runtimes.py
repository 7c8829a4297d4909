"""Typed pipelines' compiled forms in process: a ColumnTransformer by name (imputers, scalers, one-hot and ordinal
encoders, nested Pipelines, passthrough and drop) in front of the linear and tree forms answers named columns as
`pipeline.predict(DataFrame)` does, refuses what it refuses, survives its stored bytes, and proves itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.impute import KNNImputer, SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

from predserve.server.runtimes.base import Refusal
from predserve.server.runtimes.domain import OutsideDomain
from predserve.server.runtimes.tables import Block, Impute, TableProgram
from predserve.server.runtimes.typed import TableRuntime, compile_typed
from predserve.server.runtimes.typed_proof import (
    columns_of,
    pipeline_frame,
    program_matches,
    prove_typed,
    typed_proof_frame,
)

NUMBERS, TEXT = ["age", "income", "tenure"], ["plan", "country"]


def churn(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.lognormal(10, 1, n),
            "tenure": rng.integers(0, 10, n).astype(float),
            "plan": rng.choice(["basic", "pro", "team"], n).astype(object),
            "country": rng.choice(["fr", "de", "us", "uk"], n).astype(object),
        }
    )
    for column in ("age", "income"):
        frame.loc[rng.random(n) < 0.05, column] = np.nan
    for column in TEXT:
        frame.loc[rng.random(n) < 0.05, column] = np.nan  # as pandas holds a missing text cell
    target = (frame["age"].fillna(40) / 50 + (frame["plan"] == "pro") + rng.normal(0, 0.3, n) > 1.2).astype(int)
    return frame, target.to_numpy()


def scaled_one_hot(unknown: str = "ignore") -> ColumnTransformer:
    numbers = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    text = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
            ("encode", OneHotEncoder(handle_unknown=unknown)),
        ]
    )
    return ColumnTransformer([("numbers", numbers, NUMBERS), ("text", text, TEXT)])


def ordinal() -> ColumnTransformer:
    return ColumnTransformer(
        [
            ("numbers", SimpleImputer(strategy="median"), NUMBERS),
            ("text", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), TEXT),
        ]
    )


def minmax_passthrough() -> ColumnTransformer:
    return ColumnTransformer(
        [
            ("scaled", Pipeline([("fill", SimpleImputer()), ("minmax", MinMaxScaler())]), ["age", "income"]),
            ("text", Pipeline([("fill", SimpleImputer(strategy="most_frequent")), ("hot", OneHotEncoder())]), ["plan"]),
            ("gone", "drop", ["country"]),
        ],
        remainder="passthrough",
    )


CASES: dict[str, tuple[Any, bool]] = {  # name: (pipeline, trained on rows without missing values)
    "logistic_one_hot": (Pipeline([("prep", scaled_one_hot()), ("model", LogisticRegression(max_iter=1000))]), False),
    "logistic_unknown_refused": (
        Pipeline([("prep", scaled_one_hot("error")), ("model", LogisticRegression(max_iter=1000))]),
        False,
    ),
    "logistic_nothing_imputed": (
        Pipeline(
            [
                ("prep", ColumnTransformer([("n", StandardScaler(), NUMBERS), ("t", OneHotEncoder(), TEXT)])),
                ("model", LogisticRegression(max_iter=1000)),
            ]
        ),
        True,
    ),
    "ridge_minmax_passthrough": (Pipeline([("prep", minmax_passthrough()), ("model", Ridge())]), False),
    "boosting_ordinal": (
        Pipeline([("prep", ordinal()), ("model", HistGradientBoostingClassifier(max_iter=30))]),
        False,
    ),
    "forest_ordinal": (Pipeline([("prep", ordinal()), ("model", RandomForestClassifier(n_estimators=20))]), False),
    "forest_regressor_ordinal": (
        Pipeline([("prep", ordinal()), ("model", RandomForestRegressor(n_estimators=20))]),
        False,
    ),
}


def probes() -> pd.DataFrame:
    frame, _ = churn(80, seed=1)
    frame.loc[0, "plan"] = "enterprise"
    frame.loc[1, "country"] = np.nan
    frame.loc[2, "age"] = np.nan
    frame.loc[3, "income"] = 1e308
    frame.loc[4, "tenure"] = -3.5e38
    return frame


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    frame, target = churn(1500, seed=0)
    out = {}
    for name, (pipeline, complete) in CASES.items():
        rows = frame.dropna() if complete else frame
        labels = target[rows.index] if "regressor" not in name and "ridge" not in name else rows["tenure"].to_numpy()
        out[name] = pipeline.fit(rows, labels)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_each_row_is_answered_or_refused_as_the_pipeline_does(name: str, fitted: dict[str, Any]) -> None:
    pipeline = fitted[name]
    compiled = compile_typed(pipeline, set(TEXT))
    assert isinstance(compiled, TableRuntime), compiled
    runtime = TableRuntime.from_bytes(compiled.to_bytes())
    frame = probes()
    outcomes = {"answered": 0, "refused": 0}
    for index in range(len(frame)):
        row = frame.iloc[[index]]
        try:
            with np.errstate(all="ignore"):
                expected = pipeline.predict(row)
        except ValueError:
            with pytest.raises(OutsideDomain, match=r"row 0, column '\w+'"):
                runtime.predict(columns_of(row, TEXT))
            outcomes["refused"] += 1
            continue
        got = runtime.predict(columns_of(row, TEXT))
        if hasattr(pipeline, "predict_proba"):
            assert list(got) == list(expected)
            proba = runtime.predict_proba(columns_of(row, TEXT))
            np.testing.assert_allclose(proba, pipeline.predict_proba(row), atol=1e-9, rtol=0)
        else:
            np.testing.assert_allclose(got, expected, atol=1e-9, rtol=0)
        outcomes["answered"] += 1
    assert outcomes["answered"] > 60, outcomes
    if name in ("logistic_unknown_refused", "logistic_nothing_imputed"):
        assert outcomes["refused"] > 0, outcomes


@pytest.mark.parametrize("name", list(CASES))
def test_the_proof_passes_on_edges_and_fails_a_form_that_answers_refused_rows(
    name: str, fitted: dict[str, Any]
) -> None:
    pipeline = fitted[name]
    runtime = compile_typed(pipeline, set(TEXT))
    assert isinstance(runtime, TableRuntime)
    frame = typed_proof_frame(probes().iloc[5:60].reset_index(drop=True), TEXT)
    proof = prove_typed(pipeline, runtime, frame, TEXT, 1e-9)
    assert proof.passed, proof.reason
    assert proof.rows_checked == len(frame) > 55

    class AnswersAnything:
        def predict_both(self, columns: Any) -> Any:
            try:
                return runtime.predict_both(columns)
            except OutsideDomain:
                return runtime.predict_both(columns_of(probes().iloc[[5]], TEXT))

    if name in ("logistic_unknown_refused", "logistic_nothing_imputed"):
        failed = prove_typed(pipeline, AnswersAnything(), frame, TEXT, 1e-9)
        assert not failed.passed and "which the pipeline refuses: the runtime answers it" in failed.reason


@pytest.mark.parametrize(
    ("prep", "named"),
    [
        (ColumnTransformer([("n", KNNImputer(), NUMBERS), ("t", OneHotEncoder(), TEXT)]), "KNNImputer"),
        (ColumnTransformer([("n", SimpleImputer(), NUMBERS), ("t", OneHotEncoder(drop="first"), TEXT)]), "drop"),
        (
            ColumnTransformer([("n", SimpleImputer(add_indicator=True), NUMBERS), ("t", OrdinalEncoder(), TEXT)]),
            "add_indicator",
        ),
    ],
    ids=["knn_imputer", "one_hot_drop", "imputer_indicator"],
)
def test_a_step_without_a_compiled_form_is_named(prep: ColumnTransformer, named: str) -> None:
    frame, target = churn(300, seed=2)
    frame = frame.fillna({"plan": "basic", "country": "fr"})
    pipeline = Pipeline([("prep", prep), ("model", LogisticRegression(max_iter=500))]).fit(frame, target)
    refusal = compile_typed(pipeline, set(TEXT))
    assert isinstance(refusal, Refusal) and named in refusal.reason


def test_damaged_stored_bytes_are_value_errors(fitted: dict[str, Any]) -> None:
    compiled = compile_typed(fitted["logistic_one_hot"], set(TEXT))
    assert isinstance(compiled, TableRuntime)
    data = compiled.to_bytes()
    for damaged in (data[: len(data) // 2], b"not a runtime"):
        with pytest.raises(ValueError):
            TableRuntime.from_bytes(damaged)


@pytest.mark.parametrize("name", ["boosting_ordinal", "forest_ordinal", "forest_regressor_ordinal"])
def test_large_calls_go_to_the_estimator_on_the_proven_matrix(name: str, fitted: dict[str, Any]) -> None:
    """Past the tree form's most_rows, the pipeline's estimator answers on the program's matrix, which the proof
    found equal to what the pipeline's own steps give; answers and refusals stay the pipeline's."""
    pipeline = fitted[name]
    compiled = compile_typed(pipeline, set(TEXT))
    assert isinstance(compiled, TableRuntime), compiled
    runtime = TableRuntime.from_bytes(compiled.to_bytes())
    frame, _ = churn(900, seed=3)
    frame.loc[5, "plan"] = "enterprise"  # unseen: the ordinal encoder's unknown_value
    assert program_matches(pipeline, runtime, typed_proof_frame(frame.iloc[:50], TEXT), TEXT)
    large = runtime.with_estimator(pipeline[-1])
    assert large.most_rows is None and runtime.most_rows is not None
    columns = columns_of(pipeline_frame(frame, TEXT), TEXT)
    expected = pipeline.predict(frame)
    assert np.array_equal(large.predict(columns), expected)
    labels, proba = large.predict_both(columns)
    assert np.array_equal(labels, expected)
    if hasattr(pipeline, "predict_proba"):
        assert np.array_equal(proba, pipeline.predict_proba(frame))
    if "forest" in name:  # the forest's float32 cast refuses 1e308, in a large call as in the pipeline
        frame.loc[700, "income"] = 1e308
        with pytest.raises(ValueError):
            pipeline.predict(frame)
        with pytest.raises(OutsideDomain, match="row 700, column 'income'"):
            large.predict(columns_of(pipeline_frame(frame, TEXT), TEXT))


def test_a_program_that_differs_from_the_pipelines_steps_does_not_match(fitted: dict[str, Any]) -> None:
    pipeline = fitted["boosting_ordinal"]
    compiled = compile_typed(pipeline, set(TEXT))
    assert isinstance(compiled, TableRuntime)
    frame = typed_proof_frame(churn(50, seed=4)[0], TEXT)
    assert program_matches(pipeline, compiled, frame, TEXT)
    numbers, text = compiled.program.blocks
    (impute,) = numbers.steps
    skewed = Block(numbers.columns, numbers.kinds, (Impute(impute.fill + 1e-9),))
    other = TableRuntime(TableProgram((skewed, text), compiled.program.inputs), compiled.inner, compiled.check)
    assert not program_matches(pipeline, other, frame, TEXT)
