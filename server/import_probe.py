"""Loads a joblib file in a throw-away process and describes what it holds, as one JSON line.

Import runs this before the server itself unpickles anything. Both unpickle through the same
allow-list (server/storage/safe_pickle.py), so a pickle naming anything else is refused here with the
global's name; the process remains for what the allow-list cannot stop: a crash, a hang or an exit in
allowed code must end this process, not the server.
Usage: python -m server.import_probe FILE [TRUSTED_MODULE ...] < request-json: {"rows": the dataset's feature
rows or null, "dataset_schema": their columns or null, "stated": the importer's [[name, type], ...]}
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any

import numpy as np

from predserve.server.domain import Column, ColumnType, Schema
from predserve.server.services.pipeline_inputs import (
    frame_of_rows,
    infer_schema,
    merge_stated,
    rows_of_frame,
    sample_frame,
)
from predserve.server.storage.safe_pickle import load_restricted

SELF_CHECK_ROWS = 5


def describe(path: str, request: dict[str, Any] | None, trusted_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the file holds, the inputs it takes (input_schema), its answers to a few rows (the self-check), and
    its predictions for the dataset's rows when they fit it (the import scores them against the dataset's targets)."""
    request = request or {}
    with open(path, "rb") as handle:
        model = load_restricted(handle.read(), trusted_modules)
    if not callable(getattr(model, "predict", None)):
        return {"error": f"the file holds a {type(model).__name__}, which has no predict()"}
    n_features = getattr(model, "n_features_in_", None)
    if n_features is None:
        return {"error": f"the {type(model).__name__} does not say how many features it expects (n_features_in_)"}
    classes = getattr(model, "classes_", None)
    names = getattr(model, "feature_names_in_", None)
    inferred, categories = infer_schema(model)
    stated = tuple(Column(str(name), ColumnType(kind)) for name, kind in request.get("stated") or ())
    known_names = [] if names is None else [str(n) for n in names]
    try:
        schema = merge_stated(inferred, known_names, int(n_features), stated)
    except ValueError as exc:
        return {"error": str(exc)}
    rows = request.get("rows")
    if not schema.numeric:
        return _describe_typed(model, schema, categories, rows, request.get("dataset_schema"))
    given = np.asarray(rows, dtype=np.float64) if rows else None
    if given is not None and given.shape[1] == int(n_features):
        predictions = model.predict(given).tolist()
        sample, outputs = given[:SELF_CHECK_ROWS], predictions[:SELF_CHECK_ROWS]
    else:
        predictions = None
        sample = np.asarray(_default_sample(int(n_features)), dtype=np.float64)
        outputs = model.predict(sample).tolist()
    return {
        "estimator": _final_estimator_name(model),
        "n_features": int(n_features),
        "classes": None if classes is None else np.asarray(classes).tolist(),
        "feature_names": None if names is None else [str(n) for n in names],
        "sample": sample.tolist(),
        "outputs": outputs,
        "predictions": predictions,
        "input_schema": schema.to_json(),
    }


def _describe_typed(
    model: Any, schema: Schema, categories: dict[str, list[str]], rows: list[list[Any]] | None, dataset: Any
) -> dict[str, Any]:
    """The same description for a pipeline that takes a DataFrame: the dataset's rows as its columns by name."""
    predictions = None
    if rows and dataset:
        columns = Schema.from_json(dataset).names
        missing = [name for name in schema.names if name not in columns]
        if missing:
            return {"error": f"the dataset has no column(s) {', '.join(missing)}, which the pipeline takes"}
        positions = [columns.index(name) for name in schema.names]
        try:
            frame = frame_of_rows(schema, [[row[i] for i in positions] for row in rows])
        except ValueError as exc:
            return {"error": f"the dataset's rows do not fit the pipeline's columns: {exc}"}
        predictions = model.predict(frame).tolist()
        sample, outputs = frame.iloc[:SELF_CHECK_ROWS], predictions[:SELF_CHECK_ROWS]
    else:
        sample = sample_frame(schema, categories, SELF_CHECK_ROWS)
        outputs = model.predict(sample).tolist()
    classes = getattr(model, "classes_", None)
    return {
        "estimator": _final_estimator_name(model),
        "n_features": len(schema.columns),
        "classes": None if classes is None else np.asarray(classes).tolist(),
        "feature_names": list(schema.names),
        "sample": rows_of_frame(sample),
        "outputs": outputs,
        "predictions": predictions,
        "input_schema": schema.to_json(),
    }


def _default_sample(n_features: int) -> list[list[float]]:
    return np.random.default_rng(0).normal(size=(SELF_CHECK_ROWS, n_features)).tolist()


def _final_estimator_name(model: Any) -> str:
    steps = getattr(model, "steps", None)
    return type(steps[-1][1] if steps else model).__name__


def main() -> int:
    request = json.loads(sys.stdin.read() or "null")
    try:
        description = describe(sys.argv[1], request, tuple(sys.argv[2:]))
    except pickle.UnpicklingError as exc:  # ForbiddenGlobal among them: its text names the global
        description = {"error": f"it does not unpickle: {exc}"[:500]}
    except Exception as exc:  # anything the pickle raises is the answer
        description = {"error": f"loading or calling the model failed: {exc!r}"[:500]}
    print(json.dumps(description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
