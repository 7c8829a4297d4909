"""The shapes every runtime shares: what predicts, what is stored, and what the proof found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Runtime(Protocol):
    """A compiled form of one fitted pipeline, answering float64 rows as the pipeline would."""

    # The library that answers ("onnxruntime", "treelite", ...) and its version, recorded with the set.
    name: str
    version: str
    # The largest call it should answer; above it the pipeline is faster (None: no limit).
    most_rows: int | None

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Labels (classifiers, as the pipeline's classes_ values) or values (regressors), one per row."""
        ...

    def predict_proba(self, rows: np.ndarray) -> np.ndarray | None:
        """Class probabilities in the order of the pipeline's classes_, or None for a regressor."""
        ...

    def predict_both(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels and probabilities from one computation, where the labels come from the probabilities."""
        ...


@dataclass(frozen=True)
class CompiledForm:
    """A runtime built from a pipeline, and the bytes that rebuild it (persisted beside the artifact)."""

    runtime: Runtime
    data: bytes


@dataclass(frozen=True)
class Refusal:
    """Why a pipeline has no compiled form (an estimator family no runtime covers, a failed conversion)."""

    reason: str


@dataclass(frozen=True)
class Proof:
    """What comparing a runtime with its pipeline found: it may answer only if `passed`."""

    rows_checked: int
    # Largest absolute difference of a probability or regression value; 0.0 when every value is identical.
    max_deviation: float
    passed: bool
    # Why it did not pass (labels differ, a deviation over the tolerance, the runtime raised), or "".
    reason: str = ""


def as_rows(rows: Any) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float64)
