"""Which rows a compiled form is proved on, and the proof: the same labels and values within a tolerance."""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator

from server.runtimes.base import Proof, Runtime, as_rows

# Beyond the training range by this fraction of each feature's span (of its magnitude when the span is zero).
BEYOND = 0.1
UNIFORM_ROWS = 256
BEYOND_ROWS = 64
# All 2**n corners up to this many features; a random sample of corners above it.
ALL_CORNERS_UP_TO = 8
SAMPLED_CORNERS = 128


def proof_rows(
    held_out: ArrayLike | None,
    self_check: ArrayLike | None,
    low: ArrayLike,
    high: ArrayLike,
    rng_seed: int = 0,
) -> np.ndarray:
    """The set's held-out and self-check rows (either may be None), then rows spread over [low, high] per feature
    and a little past it.

    The spread: the per-feature minima and maxima (all together and one feature at a time with the rest at the
    middle), the box's corners, uniform samples inside, and uniform samples in the box widened by BEYOND.
    """
    low = np.asarray(low, dtype=np.float64).reshape(-1)
    high = np.asarray(high, dtype=np.float64).reshape(-1)
    if low.shape != high.shape:
        raise ValueError(f"low and high differ in shape: {low.shape} and {high.shape}")
    n_features = low.shape[0]
    given = [
        np.asarray(rows, dtype=np.float64).reshape(-1, n_features)
        for rows in (held_out, self_check)
        if rows is not None
    ]
    rng = np.random.default_rng(rng_seed)
    middle = (low + high) / 2
    span = high - low
    margin = np.where(span > 0, BEYOND * span, BEYOND * np.maximum(np.abs(low), 1.0))
    below, above = low - margin, high + margin

    one_at_a_time = []
    for bound in (low, high, below, above):
        rows = np.tile(middle, (n_features, 1))
        rows[np.arange(n_features), np.arange(n_features)] = bound
        one_at_a_time.append(rows)
    if n_features <= ALL_CORNERS_UP_TO:
        picks = np.array(list(itertools.product((False, True), repeat=n_features)), dtype=bool).reshape(-1, n_features)
    else:
        picks = rng.random((SAMPLED_CORNERS, n_features)) < 0.5
    corners = np.where(picks, high, low)
    inside = rng.uniform(low, high, size=(UNIFORM_ROWS, n_features))
    widened = rng.uniform(below, above, size=(BEYOND_ROWS, n_features))
    spread = [np.stack([low, high, middle, below, above]), *one_at_a_time, corners, inside, widened]
    return np.ascontiguousarray(np.concatenate([*given, *spread]))


def _deviation(expected: np.ndarray, got: np.ndarray) -> float:
    # equal values (infinities, NaN on both sides) deviate by 0; a NaN on one side only deviates without bound
    same = (expected == got) | (np.isnan(expected) & np.isnan(got))
    diff = np.where(same, 0.0, np.abs(expected - got))
    if np.isnan(diff).any():
        return float("inf")
    return float(diff.max()) if diff.size else 0.0


def _labels_differ(expected: np.ndarray, got: np.ndarray) -> str:
    if got.shape != expected.shape:
        return f"labels of shape {got.shape}, the pipeline's {expected.shape}"
    same = expected.astype(object) == got.astype(object)
    if not same.all():
        first = int(np.flatnonzero(~same)[0])
        count = int((~same).sum())
        return f"labels differ on {count} row(s), first row {first}: {got[first]!r} for {expected[first]!r}"
    return ""


def prove(pipeline: BaseEstimator, runtime: Runtime, rows: np.ndarray, tolerance: float) -> Proof:
    """Compares predict, predict_proba and predict_both of `runtime` with `pipeline` on `rows`."""
    rows = as_rows(rows)
    n = len(rows)
    is_classifier = hasattr(pipeline, "classes_")
    try:
        expected_labels = np.asarray(pipeline.predict(rows))
        expected_values = np.asarray(pipeline.predict_proba(rows) if is_classifier else expected_labels, float)
    except Exception as exc:  # the pipeline cannot answer these rows, so nothing can be proved on them
        return Proof(n, 0.0, False, f"the pipeline raised on the proof rows: {type(exc).__name__}: {exc}")
    try:
        labels = np.asarray(runtime.predict(rows))
        proba = runtime.predict_proba(rows)
        both_labels, both_proba = runtime.predict_both(rows)
    except Exception as exc:  # a runtime that raises is refused, whatever it raised
        return Proof(n, 0.0, False, f"the runtime raised: {type(exc).__name__}: {exc}")

    if not is_classifier:
        if proba is not None or both_proba is not None:
            return Proof(n, 0.0, False, "the runtime gave probabilities for a regressor")
        answers = {"predict": np.asarray(labels), "predict_both": np.asarray(both_labels)}
    else:
        if proba is None or both_proba is None:
            return Proof(n, 0.0, False, "the runtime gave no probabilities for a classifier")
        for method, got in (("predict", labels), ("predict_both", both_labels)):
            differ = _labels_differ(expected_labels, np.asarray(got))
            if differ:
                return Proof(n, 0.0, False, f"{method}: {differ}")
        answers = {"predict_proba": np.asarray(proba), "predict_both": np.asarray(both_proba)}

    worst = 0.0
    for method, got in answers.items():
        if got.shape != expected_values.shape:
            return Proof(n, 0.0, False, f"{method} gave shape {got.shape}, the pipeline {expected_values.shape}")
        deviation = _deviation(expected_values, got.astype(np.float64))
        worst = max(worst, deviation)
        if deviation > tolerance:
            return Proof(n, worst, False, f"{method} deviates by {deviation:.3g}, over the tolerance {tolerance:g}")
    return Proof(n, worst, True)
