"""A typed churn table and DataFrame pipelines fitted on it, for the tests of Predict by name.

`churn_pipeline()` is what a data scientist fits on a DataFrame: a ColumnTransformer routing the numbers to an
imputer and a scaler and the strings to an imputer and a one-hot encoder, then a logistic regression. The
variants refuse what it accepts: an encoder that errors on an unknown category, a number branch without imputer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from predserve.server.domain import Column, ColumnType, PredictionSetRecord, Schema
from predserve.server.model_store import LoadedModel, ModelStore
from predserve.server.services.prediction import PredictionService

NUMBERS = ["age", "income"]
STRINGS = ["plan", "country"]
SCHEMA = Schema(
    (
        Column("age", ColumnType.NUMBER),
        Column("income", ColumnType.NUMBER),
        Column("plan", ColumnType.STRING),
        Column("country", ColumnType.STRING),
    ),
    by_name=True,
)
# Rows as a caller sends them: a missing income, a missing plan, an unseen country, integers for numbers.
PROBES: list[dict[str, Any]] = [
    {"age": 30, "income": None, "plan": "pro", "country": "fr"},
    {"age": 61.5, "income": 42.0, "plan": None, "country": "de"},
    {"age": 45, "income": 75.5, "plan": "basic", "country": "jp"},
    {"age": 22, "income": 18.0, "plan": "team", "country": "us"},
]


def churn_frame(rows: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "income": rng.normal(50, 15, rows),
            "plan": pd.Series(rng.choice(["basic", "pro", "team"], rows), dtype=object),
            "country": pd.Series(rng.choice(["fr", "de", "us"], rows), dtype=object),
        }
    )
    frame.loc[::7, "income"] = np.nan
    frame.loc[::11, "plan"] = np.nan
    churned = ((frame["plan"] == "basic") & (frame["age"] > 40)) | (frame["income"].fillna(50) < 35)
    return frame, churned.to_numpy(dtype=int)


def churn_pipeline(handle_unknown: str = "ignore", impute_numbers: bool = True) -> Any:
    numbers = make_pipeline(SimpleImputer(), StandardScaler()) if impute_numbers else StandardScaler()
    strings = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown=handle_unknown)
    )
    transformer = ColumnTransformer([("numbers", numbers, NUMBERS), ("strings", strings, STRINGS)])
    frame, churned = churn_frame()
    if not impute_numbers:
        frame = frame.fillna({"income": 50.0})
    return make_pipeline(transformer, LogisticRegression()).fit(frame, churned)


def expected_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a notebook would give them to the pipeline: pandas' own DataFrame of the dicts."""
    return pd.DataFrame(rows, columns=[column.name for column in SCHEMA.columns])


def loaded_model(pipeline: Any, model_type: str = "churn", set_id: int = 1, schema: Schema = SCHEMA) -> LoadedModel:
    record = PredictionSetRecord(
        id=set_id,
        model_type=model_type,
        dataset="churn",
        created_at="2026-12-07T00:00:00Z",
        is_current=True,
        metrics={},
        algorithm="imported",
        task="classification",
        feature_names=schema.names,
        classes=tuple(int(c) for c in pipeline.classes_),
        input_schema=schema,
    )
    return LoadedModel(record=record, pipeline=pipeline, load_seconds=0.0)


def prediction_service(*models: LoadedModel) -> PredictionService:
    store = ModelStore()
    for model in models:
        store.put(model.record.model_type, model)
    store.mark_startup_loaded()
    return PredictionService(store, sets=None, loader=None)  # type: ignore[arg-type]
