"""Random forests and histogram gradient boosting answered by treelite's GTIL, fed as scikit-learn feeds its trees.

Forests compare float32 features (sklearn's trees cast X to float32 before walking), so the rows are rounded to
float32 first; without that a value between a float64 and its float32 rounding lands on the other side of a
threshold (the 3.7 regression difference seen first). Boosting takes float64 rows and treelite's raw margins;
the link (expit, softmax, exp) is applied here with the operations scikit-learn's losses use.
"""

from __future__ import annotations

import numpy as np
import treelite
import treelite.sklearn
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)

from predserve.server.runtimes.base import as_rows
from predserve.server.runtimes.domain import PAST_FLOAT32, require_finite
from predserve.server.runtimes.gtil import GtilCall
from predserve.server.runtimes.scaling import Standardization
from predserve.server.runtimes.stored import classes_from_arrays, classes_to_arrays, pack, require, unpack

FORMAT = "treelite"
FOREST = "forest"
BOOSTING = "boosting"
# How a boosting regressor's margin becomes its value: its loss's link inverse.
IDENTITY = "identity"
LOG = "log"
_LINKS = {"IdentityLink": IDENTITY, "LogLink": LOG}


class UnsupportedTrees(ValueError):
    """A tree model this runtime cannot answer as scikit-learn does (categorical splits, several outputs...)."""


def describe(estimator: BaseEstimator) -> tuple[str, str]:
    """(family, link) of a supported tree estimator; UnsupportedTrees says why not."""
    if isinstance(estimator, RandomForestClassifier | RandomForestRegressor):
        if estimator.n_outputs_ != 1:
            raise UnsupportedTrees(f"{type(estimator).__name__} with {estimator.n_outputs_} outputs")
        return FOREST, IDENTITY
    categorical = getattr(estimator, "is_categorical_", None)
    if categorical is not None and np.any(categorical):
        raise UnsupportedTrees(f"{type(estimator).__name__} with categorical features (scikit-learn bins them first)")
    if isinstance(estimator, HistGradientBoostingClassifier):
        return BOOSTING, IDENTITY
    link = type(estimator._loss.link).__name__
    if link not in _LINKS:
        raise UnsupportedTrees(f"{type(estimator).__name__} with loss {estimator.loss!r} (link {link})")
    return BOOSTING, _LINKS[link]


class TreeliteRuntime:
    name = FORMAT
    version = treelite.__version__
    # Measured (compile.py): 100x faster than scikit-learn for one row, slower from about 500 rows, where
    # scikit-learn's forests vectorise over rows; larger calls are left to the pipeline.
    most_rows: int | None = 300

    def __init__(
        self,
        model: treelite.Model,
        family: str,
        link: str,
        classes: np.ndarray | None,
        standardization: Standardization | None,
    ) -> None:
        self._model = model
        self._family = family
        self._link = link
        self._classes = classes
        self._standardization = standardization
        self.n_features = model.num_feature
        self._predict = GtilCall(model, raw_margin=family == BOOSTING)

    @classmethod
    def of(cls, estimator: BaseEstimator, standardization: Standardization | None) -> TreeliteRuntime:
        family, link = describe(estimator)
        classes = np.asarray(estimator.classes_) if hasattr(estimator, "classes_") else None
        return cls(treelite.sklearn.import_model(estimator), family, link, classes, standardization)

    def _outputs(self, rows: np.ndarray) -> np.ndarray:
        """Forest: averaged leaf values (n, k); boosting: raw margins (n, k)."""
        x = as_rows(rows)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {x.shape}")
        given = x
        if self._standardization is not None:
            x = self._standardization.apply(x)
        narrowed = self.require_in_domain(x, given)
        if narrowed is not None:
            x = narrowed.astype(np.float64)
        return self._predict(x).reshape(x.shape[0], -1)

    def require_in_domain(self, x: np.ndarray, given: np.ndarray) -> np.ndarray | None:
        """OutsideDomain for a row the estimator refuses: a forest where scikit-learn's float32 cast gives
        infinity (NaN it takes); boosting takes every value. Returns a forest's float32 rows."""
        if self._family != FOREST:
            return None
        with np.errstate(over="ignore"):
            narrowed = x.astype(np.float32)
        require_finite(narrowed, given, PAST_FLOAT32, allow_nan=True)
        return narrowed

    def _answer(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self._outputs(rows)
        if self._classes is None:
            values = out[:, 0]
            return (np.exp(values) if self._link == LOG else values), None
        if self._family == FOREST:  # ForestClassifier.predict: classes_.take(argmax(proba))
            return self._classes[out.argmax(axis=1)], out
        if out.shape[1] == 1:  # HalfBinomialLoss.predict_proba, HistGradientBoostingClassifier.predict
            margin = out[:, 0]
            proba = np.empty((len(margin), 2))
            proba[:, 1] = expit(margin)
            proba[:, 0] = 1 - proba[:, 1]
            return self._classes[(margin > 0).astype(np.intp)], proba
        proba = out - out.max(axis=1).reshape(-1, 1)  # sklearn.utils.extmath.softmax
        np.exp(proba, out=proba)
        proba /= proba.sum(axis=1).reshape(-1, 1)
        return self._classes[out.argmax(axis=1)], proba

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self._answer(rows)[0]

    def predict_proba(self, rows: np.ndarray) -> np.ndarray | None:
        return None if self._classes is None else self._answer(rows)[1]

    def predict_both(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._answer(rows)

    def to_bytes(self) -> bytes:
        arrays = {
            "model": np.frombuffer(self._model.serialize_bytes(), dtype=np.uint8),
            "family": np.array(self._family),
            "link": np.array(self._link),
        }
        if self._classes is not None:
            arrays.update(classes_to_arrays(self._classes))
        if self._standardization is not None:
            arrays.update(self._standardization.to_arrays())
        return pack(FORMAT, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> TreeliteRuntime:
        arrays = unpack(FORMAT, data)
        model_bytes, family_array, link_array = require(arrays, FORMAT, "model", "family", "link")
        family, link = str(family_array), str(link_array)
        if model_bytes.dtype != np.uint8 or family not in (FOREST, BOOSTING) or link not in (IDENTITY, LOG):
            raise ValueError(f"corrupt {FORMAT} runtime data: model {model_bytes.dtype}, {family!r}, {link!r}")
        try:
            model = treelite.Model.deserialize_bytes(model_bytes.tobytes())
        except treelite.TreeliteError as exc:
            raise ValueError(f"corrupt {FORMAT} runtime data: {exc}") from exc
        classes = classes_from_arrays(arrays, FORMAT) if "classes" in arrays else None
        standardization = Standardization.from_arrays(arrays, FORMAT, model.num_feature)
        return cls(model, family, link, classes, standardization)
