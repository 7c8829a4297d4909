"""Loads a joblib file in a throw-away process and describes what it holds, as one JSON line.

Import runs this before the server itself unpickles anything. Both unpickle through the same
allow-list (server/storage/safe_pickle.py), so a pickle naming anything else is refused here with the
global's name; the process remains for what the allow-list cannot stop: a crash, a hang or an exit in
allowed code must end this process, not the server.
Usage: python -m server.import_probe FILE [TRUSTED_MODULE ...] < rows-json (the dataset's feature rows, or null)
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any

import numpy as np

from server.storage.safe_pickle import load_restricted

SELF_CHECK_ROWS = 5


def describe(path: str, rows: list[list[float]] | None, trusted_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the file holds, its answers to a few rows (the self-check), and its predictions for `rows`
    when they have the width it expects (the import scores them against the dataset's targets)."""
    with open(path, "rb") as handle:
        model = load_restricted(handle.read(), trusted_modules)
    if not callable(getattr(model, "predict", None)):
        return {"error": f"the file holds a {type(model).__name__}, which has no predict()"}
    n_features = getattr(model, "n_features_in_", None)
    if n_features is None:
        return {"error": f"the {type(model).__name__} does not say how many features it expects (n_features_in_)"}
    classes = getattr(model, "classes_", None)
    names = getattr(model, "feature_names_in_", None)
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
    }


def _default_sample(n_features: int) -> list[list[float]]:
    return np.random.default_rng(0).normal(size=(SELF_CHECK_ROWS, n_features)).tolist()


def _final_estimator_name(model: Any) -> str:
    steps = getattr(model, "steps", None)
    return type(steps[-1][1] if steps else model).__name__


def main() -> int:
    rows = json.loads(sys.stdin.read() or "null")
    try:
        description = describe(sys.argv[1], rows, tuple(sys.argv[2:]))
    except pickle.UnpicklingError as exc:  # ForbiddenGlobal among them: its text names the global
        description = {"error": f"it does not unpickle: {exc}"[:500]}
    except Exception as exc:  # anything the pickle raises is the answer
        description = {"error": f"loading or calling the model failed: {exc!r}"[:500]}
    print(json.dumps(description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
