"""Loads a joblib file in a throw-away process and describes what it holds, as one JSON line.

Import runs this before the server itself unpickles anything: a pickle runs code when loaded, so
a crash, a hang or an exit while loading must end this process, not the server.
Usage: python -m server.import_probe FILE < sample-rows-json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import joblib
import numpy as np


def describe(path: str, sample: list[list[float]] | None) -> dict[str, Any]:
    model = joblib.load(path)
    if not callable(getattr(model, "predict", None)):
        return {"error": f"the file holds a {type(model).__name__}, which has no predict()"}
    n_features = getattr(model, "n_features_in_", None)
    if n_features is None:
        return {"error": f"the {type(model).__name__} does not say how many features it expects (n_features_in_)"}
    classes = getattr(model, "classes_", None)
    names = getattr(model, "feature_names_in_", None)
    rows = np.asarray(sample if sample else _default_sample(int(n_features)), dtype=np.float64)
    return {
        "estimator": _final_estimator_name(model),
        "n_features": int(n_features),
        "classes": None if classes is None else np.asarray(classes).tolist(),
        "feature_names": None if names is None else [str(n) for n in names],
        "sample": rows.tolist(),
        "outputs": model.predict(rows).tolist(),
    }


def _default_sample(n_features: int) -> list[list[float]]:
    return np.random.default_rng(0).normal(size=(5, n_features)).tolist()


def _final_estimator_name(model: Any) -> str:
    steps = getattr(model, "steps", None)
    return type(steps[-1][1] if steps else model).__name__


def main() -> int:
    sample = json.loads(sys.stdin.read() or "null")
    try:
        description = describe(sys.argv[1], sample)
    except Exception as exc:  # anything the pickle raises is the answer
        description = {"error": f"loading or calling the model failed: {exc!r}"[:500]}
    print(json.dumps(description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
