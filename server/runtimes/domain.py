"""The input domain of a pipeline: the rows scikit-learn answers, and where a row it refuses goes wrong.

scikit-learn checks what each estimator receives, not what the caller sent: a finite 1e308 becomes infinite once a
StandardScaler divides it by a scale below one, and a LogisticRegression or Ridge then refuses it; a forest casts
its rows to float32 first, and refuses one that is past float32's range. A compiled form that skipped those checks
would answer rows the pipeline refuses (with NaN probabilities, infinite values, or a label from the last leaf), so
each form runs the same checks at the same points (`require_finite`), and a pipeline that refuses a row is asked
where (`locate_refusal`) so that both refusals name the same row and feature.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble._forest import BaseForest
from sklearn.ensemble._gb import BaseGradientBoosting
from sklearn.pipeline import Pipeline
from sklearn.tree import BaseDecisionTree

# Estimators that cast rows to float32 (sklearn.tree._tree.DTYPE) and refuse infinity; histogram boosting bins
# float64 rows and takes infinity, so it is not among them.
_FLOAT32_ESTIMATORS = (BaseDecisionTree, BaseForest, BaseGradientBoosting)

AFTER_SCALING = "infinite after the StandardScaler, which the estimator refuses"
PAST_FLOAT32 = "past float32's range, in which the trees compare, so the estimator refuses it"


class OutsideDomain(ValueError):
    """A row the pipeline refuses: which row, which feature (its column in the caller's rows, or a typed table's
    column name), the value, and why."""

    def __init__(self, row: int, feature: int | str, value: Any, why: str) -> None:
        self.row, self.feature, self.value, self.why = row, feature, value, why
        named = f"column {feature!r}" if isinstance(feature, str) else f"feature {feature}"
        super().__init__(f"row {row}, {named}: {value!r} is outside what the pipeline accepts: {why}")


def require_finite(transformed: np.ndarray, original: np.ndarray, why: str, allow_nan: bool = False) -> None:
    """Raises OutsideDomain for the first cell of `transformed` that is not finite (infinite only, with `allow_nan`:
    forests route a missing value down the tree), naming the caller's value."""
    finite = ~np.isinf(transformed) if allow_nan else np.isfinite(transformed)
    if finite.all():
        return
    row, feature = (int(i) for i in np.argwhere(~finite)[0])
    raise OutsideDomain(row, feature, original[row, feature].item(), why)


def locate_refusal(pipeline: Any, rows: np.ndarray) -> OutsideDomain | None:
    """Where `pipeline` refuses `rows` for a non-finite input to one of its steps, replaying its transforms;
    None when the refusal is something else (the caller then reports scikit-learn's own message)."""
    steps = list(pipeline.steps) if isinstance(pipeline, Pipeline) else [("estimator", pipeline)]
    x = rows
    for name, step in steps[:-1]:
        if step is None or step == "passthrough":
            continue
        try:
            transformed = np.asarray(step.transform(x), dtype=np.float64)
        except Exception:  # noqa: BLE001 - that step refuses; what it says is the pipeline's own message
            return None
        if transformed.shape == rows.shape:
            try:
                require_finite(transformed, rows, f"infinite after step {name!r} ({type(step).__name__})")
            except OutsideDomain as refusal:
                return refusal
        x = transformed
    estimator = steps[-1][1]
    if isinstance(estimator, _FLOAT32_ESTIMATORS) and x.shape == rows.shape:
        with np.errstate(over="ignore"):
            try:
                require_finite(x.astype(np.float32), rows, PAST_FLOAT32)
            except OutsideDomain as refusal:
                return refusal
    return None
