"""LogisticRegression and Ridge as numpy arithmetic: the operations scikit-learn runs, in its order, without its
input validation, so the answers are bit-identical and a one-row call costs a few microseconds."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression, Ridge

from predserve.server.runtimes.base import as_rows
from predserve.server.runtimes.domain import AFTER_SCALING, require_finite
from predserve.server.runtimes.scaling import Standardization
from predserve.server.runtimes.stored import classes_from_arrays, classes_to_arrays, pack, require, unpack

FORMAT = "numpy-linear"


class LinearRuntime:
    name = FORMAT
    version = np.__version__
    most_rows: int | None = None  # faster than scikit-learn at every size measured

    def __init__(
        self,
        coef: np.ndarray,
        intercept: np.ndarray,
        classes: np.ndarray | None,
        standardization: Standardization | None,
    ) -> None:
        # the same transposed view scikit-learn multiplies by: a contiguous copy could take another BLAS path
        self._coef_t = coef.T
        self._intercept = intercept
        self._coef = coef
        self._classes = classes
        self._standardization = standardization
        self.n_features = coef.shape[-1]

    @classmethod
    def of(cls, estimator: LogisticRegression | Ridge, standardization: Standardization | None) -> LinearRuntime:
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        intercept = np.asarray(estimator.intercept_, dtype=np.float64)
        classes = np.asarray(estimator.classes_) if isinstance(estimator, LogisticRegression) else None
        return cls(coef, intercept, classes, standardization)

    def _decision(self, rows: np.ndarray) -> np.ndarray:
        x = as_rows(rows)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {x.shape}")
        if self._standardization is not None:
            # LogisticRegression and Ridge check what the scaler gives them, as this does
            scaled = self._standardization.apply(x)
            require_finite(scaled, x, AFTER_SCALING)
            x = scaled
        # LinearModel._decision_function: X @ coef_.T + intercept_, a (n, 1) result raveled
        scores = x @ self._coef_t + self._intercept
        return scores.reshape(-1) if scores.ndim == 2 and scores.shape[1] == 1 else scores

    def _labels(self, scores: np.ndarray) -> np.ndarray:
        assert self._classes is not None
        # LinearClassifierMixin.predict: the sign for two classes, argmax otherwise
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        return self._classes[indices]

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        if scores.ndim == 1:  # LogisticRegression._predict_proba_lr for two classes: stack([1 - p, p])
            proba = np.empty((len(scores), 2))
            expit(scores, out=proba[:, 1])
            np.subtract(1, proba[:, 1], out=proba[:, 0])
            return proba
        # sklearn.utils.extmath.softmax, the same in-place steps
        proba = scores - scores.max(axis=1).reshape(-1, 1)
        np.exp(proba, out=proba)
        proba /= proba.sum(axis=1).reshape(-1, 1)
        return proba

    def predict(self, rows: np.ndarray) -> np.ndarray:
        scores = self._decision(rows)
        return scores if self._classes is None else self._labels(scores)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray | None:
        return None if self._classes is None else self._probabilities(self._decision(rows))

    def predict_both(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        scores = self._decision(rows)
        if self._classes is None:
            return scores, None
        # labels from the scores, as LogisticRegression.predict does: a tie of probabilities rounded to 0.5 each
        # would otherwise pick the other class
        return self._labels(scores), self._probabilities(scores)

    def to_bytes(self) -> bytes:
        arrays = {"coef": self._coef, "intercept": self._intercept}
        if self._classes is not None:
            arrays.update(classes_to_arrays(self._classes))
        if self._standardization is not None:
            arrays.update(self._standardization.to_arrays())
        return pack(FORMAT, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearRuntime:
        arrays = unpack(FORMAT, data)
        coef, intercept = require(arrays, FORMAT, "coef", "intercept")
        classes = classes_from_arrays(arrays, FORMAT) if "classes" in arrays else None
        if coef.dtype != np.float64 or intercept.dtype != np.float64:
            raise ValueError(f"corrupt {FORMAT} runtime data: coefficients of dtype {coef.dtype}/{intercept.dtype}")
        if classes is None:
            shapes_fit = coef.ndim == 1 and intercept.shape == ()
        else:
            rows = 1 if len(classes) == 2 else len(classes)
            shapes_fit = coef.ndim == 2 and coef.shape[0] == rows and intercept.shape == (rows,)
        if not shapes_fit:
            raise ValueError(f"corrupt {FORMAT} runtime data: coef {coef.shape}, intercept {intercept.shape}")
        standardization = Standardization.from_arrays(arrays, FORMAT, coef.shape[-1])
        return cls(coef, intercept, classes, standardization)
