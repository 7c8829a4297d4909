"""Which rows a compiled form is proved on, and the proof: the same labels and values within a tolerance."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator

from predserve.server.runtimes.base import Proof, Runtime, as_rows
from predserve.server.runtimes.domain import OutsideDomain
from predserve.server.runtimes.stored import UnstorableClasses, pack, require, unpack

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
    return np.ascontiguousarray(np.concatenate([*given, *spread, extreme_rows(middle)]))


# Finite values a caller may send that the pipeline may refuse: infinite once scaled, or past float32's range
# (3.4028235e38) where trees compare. The proof requires the same answer or the same refusal on each.
EXTREMES = (1e308, -1e308, 3.5e38, -3.5e38, 3.0e38, 1e300)
EXTREME_ROWS = len(EXTREMES) + 4


def extreme_rows(middle: np.ndarray) -> np.ndarray:
    """Every feature at each extreme, then the first and the last feature alone at the largest ones."""
    n_features = middle.shape[0]
    whole = np.array([np.full(n_features, value) for value in EXTREMES])
    alone = np.tile(middle, (4, 1))
    alone[0, 0], alone[1, 0], alone[2, -1], alone[3, -1] = 1e308, -3.5e38, -1e308, 3.5e38
    return np.concatenate([whole, alone])


def _deviation(expected: np.ndarray, got: np.ndarray) -> float:
    """The largest difference, absolute up to magnitude 1 (probabilities, ordinary values) and relative beyond:
    a value of 1e300 (the proof's extreme rows) carries rounding of about 1e287, whose size depends on the order
    BLAS sums in, which changes with the number of rows a call holds and with the CPU's kernels."""
    # equal values (infinities, NaN on both sides) deviate by 0; a NaN on one side only deviates without bound
    same = (expected == got) | (np.isnan(expected) & np.isnan(got))
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.maximum(np.abs(expected), 1.0)
        diff = np.where(same, 0.0, np.abs(expected - got) / scale)
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


@dataclass(frozen=True)
class Reference:
    """The pipeline's answers on proof rows: `labels` from predict, `values` (float64) from predict_proba for
    a classifier and predict for a regressor. Recorded at Train beside the compiled form, so that at load the
    form is proven again against them without the pipeline computing them once more."""

    rows: np.ndarray
    labels: np.ndarray
    values: np.ndarray
    is_classifier: bool
    # The SHA-256 of the artifact whose pipeline gave these answers: a form stored with another set's
    # answers is another set's form.
    pipeline_sha256: str = ""
    # The rows the pipeline refused (their labels and values are placeholders); None: it answered every row.
    refused: np.ndarray | None = None

    def stored_for(self, start: int, pipeline_sha256: str) -> Reference:
        """The answers from row `start` on, marked as given by the pipeline of that artifact."""
        refused = None if self.refused is None else self.refused[start:]
        return Reference(
            self.rows[start:], self.labels[start:], self.values[start:], self.is_classifier, pipeline_sha256, refused
        )

    @property
    def answered(self) -> np.ndarray:
        return np.ones(len(self.rows), dtype=bool) if self.refused is None else ~self.refused


class PipelineRaised(ValueError):
    """The pipeline cannot answer the proof rows, so nothing can be proved on them."""


def reference_answers(pipeline: BaseEstimator, rows: np.ndarray) -> Reference:
    """The pipeline's answers on `rows`, each row it refuses (it raises on that row alone) marked refused."""
    rows = as_rows(rows)
    is_classifier = hasattr(pipeline, "classes_")
    answers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    refused: list[int] = []
    ordinary = max(len(rows) - EXTREME_ROWS, 0)  # proof_rows puts them last: the rest is answered in one call
    for part in (np.arange(ordinary), np.arange(ordinary, len(rows))):
        _answer_or_split(pipeline, rows, part, is_classifier, answers, refused)
    if not answers:
        raise PipelineRaised(f"the pipeline raised on every proof row: {_raised(pipeline, rows[:1])}")
    some_label, some_values = next(iter(answers.values()))
    labels = np.array([answers.get(i, (some_label, some_values))[0] for i in range(len(rows))]).reshape(-1)
    values = np.stack([answers[i][1] if i in answers else np.full_like(some_values, np.nan) for i in range(len(rows))])
    if not is_classifier:
        values = values.reshape(-1)
    mask = np.zeros(len(rows), dtype=bool)
    mask[refused] = True
    return Reference(rows, labels.astype(some_label.dtype), values, is_classifier, refused=mask if refused else None)


def _answer_or_split(
    pipeline: BaseEstimator,
    rows: np.ndarray,
    part: np.ndarray,
    is_classifier: bool,
    answers: dict[int, tuple[np.ndarray, np.ndarray]],
    refused: list[int],
) -> None:
    """Answers `part` in one call; when the pipeline refuses it, each half alone, down to the rows it refuses."""
    if not len(part):
        return
    try:
        with np.errstate(all="ignore"):  # the extremes overflow by design; the answer or refusal is what counts
            labels = np.asarray(pipeline.predict(rows[part]))
            values = np.asarray(pipeline.predict_proba(rows[part]) if is_classifier else labels, float)
    except Exception:  # whatever it raised: a refusal of one of these rows
        if len(part) == 1:
            refused.append(int(part[0]))
            return
        middle = len(part) // 2
        _answer_or_split(pipeline, rows, part[:middle], is_classifier, answers, refused)
        _answer_or_split(pipeline, rows, part[middle:], is_classifier, answers, refused)
        return
    for offset, index in enumerate(part):
        answers[int(index)] = (labels[offset : offset + 1], values[offset])


def _raised(pipeline: BaseEstimator, rows: np.ndarray) -> str:
    try:
        pipeline.predict(rows)
    except Exception as exc:  # what it raised names why
        return f"{type(exc).__name__}: {exc}"
    return "it answers one row alone"


def prove(pipeline: BaseEstimator, runtime: Runtime, rows: np.ndarray, tolerance: float) -> Proof:
    """Compares predict, predict_proba and predict_both of `runtime` with `pipeline` on `rows`."""
    return prove_recording(pipeline, runtime, rows, tolerance)[0]


def prove_recording(
    pipeline: BaseEstimator, runtime: Runtime, rows: np.ndarray, tolerance: float
) -> tuple[Proof, Reference | None]:
    """The proof, and the pipeline's answers it compared with (None when the pipeline could not answer)."""
    try:
        reference = reference_answers(pipeline, rows)
    except PipelineRaised as exc:
        return Proof(len(rows), 0.0, False, str(exc)), None
    return prove_against(reference, runtime, tolerance), reference


def prove_against(reference: Reference, runtime: Runtime, tolerance: float) -> Proof:
    """Compares predict, predict_proba and predict_both of `runtime` with the pipeline's recorded answers, and
    requires the runtime to refuse (OutsideDomain) each row the pipeline refused."""
    n = len(reference.rows)
    if reference.refused is not None:
        for index in np.flatnonzero(reference.refused):
            answered = _answers_a_refused_row(runtime, reference.rows[index : index + 1], reference.is_classifier)
            if answered:
                return Proof(n, 0.0, False, f"row {index}, which the pipeline refuses: the runtime {answered}")
    keep = reference.answered
    rows = reference.rows[keep]
    expected_labels, expected_values = reference.labels[keep], reference.values[keep]
    try:
        with np.errstate(all="ignore"):
            labels = np.asarray(runtime.predict(rows))
            proba = runtime.predict_proba(rows)
            both_labels, both_proba = runtime.predict_both(rows)
    except Exception as exc:  # a runtime that raises is refused, whatever it raised
        return Proof(n, 0.0, False, f"the runtime raised: {type(exc).__name__}: {exc}")

    if not reference.is_classifier:
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


def _answers_a_refused_row(runtime: Runtime, row: np.ndarray, is_classifier: bool) -> str:
    """What the runtime did with a row the pipeline refuses, or "" when each method refused it too (a regressor's
    predict_proba computes nothing: it has no probabilities to refuse)."""
    methods = (runtime.predict, runtime.predict_proba) if is_classifier else (runtime.predict,)
    for method in (*methods, runtime.predict_both):
        try:
            with np.errstate(all="ignore"):
                method(row)
        except OutsideDomain:
            continue
        except Exception as exc:  # refusing otherwise is not the pipeline's refusal
            return f"raised {type(exc).__name__}: {exc} (in {method.__name__})"
        return f"answers it in {method.__name__}"
    return ""


# A compiled file holding the form's bytes and the Reference it was proven against: MAGIC, the form's length
# (8 bytes, little-endian), the form's bytes, then the Reference as an .npz. Not an .npz around the form's .npz:
# a zip reader looks for its directory from the end, and would find the inner one in a truncated outer file.
# A file of the form's bytes alone (written before answers were recorded) is proven against the pipeline at
# load, as it always was.
MAGIC = b"predserve-proven"
PROVEN = "proven-reference"


def with_reference(runtime_data: bytes, reference: Reference) -> bytes:
    labels = reference.labels
    as_objects = labels.dtype.kind == "O"
    if as_objects and not all(isinstance(value, str) for value in labels):
        raise UnstorableClasses("labels of mixed or non-text objects have no stored form")
    answers = pack(
        PROVEN,
        {
            "rows": reference.rows,
            "labels": labels.astype(str) if as_objects else labels,
            "labels_as_objects": np.array(as_objects),
            "values": reference.values,
            "is_classifier": np.array(reference.is_classifier),
            "pipeline_sha256": np.array(reference.pipeline_sha256),
            "refused": reference.refused if reference.refused is not None else np.zeros(len(reference.rows), bool),
        },
    )
    return MAGIC + len(runtime_data).to_bytes(8, "little") + runtime_data + answers


def split_reference(data: bytes) -> tuple[bytes, Reference | None]:
    """The form's bytes and its recorded Reference (None in a file without one); ValueError when damaged."""
    if not data.startswith(MAGIC):
        return data, None
    header = len(MAGIC) + 8
    length = int.from_bytes(data[len(MAGIC) : header], "little")
    if len(data) < header + length:
        raise ValueError(f"corrupt compiled file: its form should hold {length} bytes, the file ends before")
    arrays = unpack(PROVEN, data[header + length :])
    rows, labels, as_objects, values, is_classifier, pipeline_sha256 = require(
        arrays, PROVEN, "rows", "labels", "labels_as_objects", "values", "is_classifier", "pipeline_sha256"
    )
    if rows.ndim != 2 or not len(rows) == len(labels) == len(values):
        raise ValueError(f"corrupt {PROVEN} data: {len(rows)} rows, {len(labels)} labels, {len(values)} values")
    labels = labels.astype(object) if bool(as_objects) else labels
    refused = arrays.get("refused")  # files written before refusals were proven have none
    if refused is not None and (refused.dtype != np.bool_ or refused.shape != (len(rows),)):
        raise ValueError(f"corrupt {PROVEN} data: refused rows {refused.dtype}{refused.shape} for {len(rows)} rows")
    reference = Reference(
        rows,
        labels,
        values.astype(np.float64),
        bool(is_classifier),
        str(pipeline_sha256),
        refused if refused is not None and refused.any() else None,
    )
    return data[header : header + length], reference
