"""The proof of a typed pipeline's compiled form: the same answers as `pipeline.predict(DataFrame)`, and the same
refusals, on the set's rows and on rows made to hit every edge of its preprocessing: a missing value in each
column, a category never seen in training in each text column, and finite extremes in each number column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from predserve.server.runtimes.base import Proof
from predserve.server.runtimes.domain import OutsideDomain
from predserve.server.runtimes.fidelity import _deviation, _labels_differ
from predserve.server.runtimes.tables import Columns

UNSEEN = "\x00never-seen-in-training"
EXTREMES = (1e308, -1e308, 3.5e38)


def typed_proof_frame(given: pd.DataFrame, text_columns: Sequence[str]) -> pd.DataFrame:
    """`given` (held-out and self-check rows, in the pipeline's columns), then for its first row: each column
    missing alone, each text column unseen, each number column at each extreme, and every column missing."""
    base = given.iloc[[0]]
    edits: list[pd.DataFrame] = []
    for column in given.columns:
        missing = base.copy()
        missing[column] = np.nan  # how pandas (read_csv, a notebook) holds a missing value, text or number
        edits.append(missing)
        values = (UNSEEN,) if column in text_columns else EXTREMES
        for value in values:
            edited = base.copy()
            edited[column] = value
            edits.append(edited)
    empty = base.copy()
    for column in given.columns:
        empty[column] = np.nan
    frame = pd.concat([given, *edits, empty], ignore_index=True)
    return pipeline_frame(frame, text_columns)


def pipeline_frame(frame: pd.DataFrame, text_columns: Sequence[str]) -> pd.DataFrame:
    """The DataFrame a typed pipeline is given, as pandas reads a CSV: number columns float64, text columns object,
    a missing value NaN in either (SimpleImputer sees NaN as missing, never None)."""
    frame = frame.copy()
    for column in frame.columns:
        if column in text_columns:
            values = frame[column].astype(object)
            frame[column] = values.where(values.notna(), np.nan)
        else:
            frame[column] = frame[column].astype(np.float64)
    return frame


def columns_of(frame: pd.DataFrame, text_columns: Sequence[str]) -> Columns:
    """What a typed Predict hands a compiled form: numbers as float64 with NaN, text as objects with None."""
    return {
        name: frame[name].to_numpy(dtype=object, na_value=None)
        if name in text_columns
        else frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        for name in frame.columns
    }


def prove_typed(
    pipeline: Any,
    runtime: Any,
    frame: pd.DataFrame,
    text_columns: Sequence[str],
    tolerance: float,
    refused: Sequence[int] | None = None,
) -> Proof:
    """Row by row where the pipeline refuses some; the answered rows in one call. Labels identical, values within
    the tolerance, and every row the pipeline refuses refused by the runtime (OutsideDomain). `refused`:
    refused_rows(pipeline, frame), when the caller has it already."""
    is_classifier = hasattr(pipeline, "classes_")
    n = len(frame)
    refused = refused_rows(pipeline, frame) if refused is None else refused
    for index in refused:
        row = frame.iloc[[index]]
        try:
            with np.errstate(all="ignore"):
                runtime.predict_both(columns_of(row, text_columns))
        except OutsideDomain:
            continue
        except Exception as exc:  # refusing otherwise is not the pipeline's refusal
            return Proof(n, 0.0, False, f"row {index}, which the pipeline refuses: the runtime raised {exc!r}")
        return Proof(n, 0.0, False, f"row {index}, which the pipeline refuses: the runtime answers it")
    answered = frame.drop(index=refused).reset_index(drop=True)
    if answered.empty:
        return Proof(n, 0.0, False, "the pipeline refuses every proof row")
    try:
        with np.errstate(all="ignore"):
            labels, proba = runtime.predict_both(columns_of(answered, text_columns))
            expected_labels = np.asarray(pipeline.predict(answered))
            expected = np.asarray(pipeline.predict_proba(answered) if is_classifier else expected_labels, float)
    except Exception as exc:  # a refusal of a row the pipeline answers, or a failure
        return Proof(n, 0.0, False, f"the runtime or the pipeline raised on rows the pipeline answers: {exc!r}")
    differ = _labels_differ(expected_labels, np.asarray(labels)) if is_classifier else ""
    if differ:
        return Proof(n, 0.0, False, f"predict: {differ}")
    got = np.asarray(proba if is_classifier else labels, dtype=np.float64)
    if got.shape != expected.shape:
        return Proof(n, 0.0, False, f"the runtime gave shape {got.shape}, the pipeline {expected.shape}")
    deviation = _deviation(expected, got)
    if deviation > tolerance:
        return Proof(n, deviation, False, f"deviates by {deviation:.3g}, over the tolerance {tolerance:g}")
    return Proof(n, deviation, True)


def program_matches(
    pipeline: Any,
    runtime: Any,
    frame: pd.DataFrame,
    text_columns: Sequence[str],
    refused: Sequence[int] | None = None,
) -> bool:
    """Whether the form's program gives, on the rows of `frame` the pipeline answers, exactly the dense matrix the
    pipeline's steps before its estimator give (NaN where they give NaN): then the estimator, given that matrix,
    answers as the pipeline does, and may answer calls too large for the estimator's compiled form. `refused`:
    refused_rows(pipeline, frame), when the caller has it already."""
    import scipy.sparse

    refused = refused_rows(pipeline, frame) if refused is None else refused
    answered = frame.drop(index=refused).reset_index(drop=True)
    if answered.empty:
        return False
    try:
        with np.errstate(all="ignore"):
            expected = pipeline[:-1].transform(answered)
            got = runtime.program.matrix(columns_of(answered, text_columns))
    except Exception:  # a refusal of a row the pipeline answers: no match
        return False
    if scipy.sparse.issparse(expected):  # the estimator is given a sparse matrix inside the pipeline
        return False
    expected = np.asarray(expected)
    return expected.dtype == got.dtype and expected.shape == got.shape and np.array_equal(expected, got, equal_nan=True)


def refused_rows(pipeline: Any, frame: pd.DataFrame) -> list[int]:
    """The rows the pipeline refuses alone: one call for all, then halves of a refused part, down to single rows."""
    refused: list[int] = []

    def visit(part: np.ndarray) -> None:
        try:
            with np.errstate(all="ignore"):
                pipeline.predict(frame.iloc[part])
            return
        except Exception:  # whatever it raised: one of these rows is refused
            if len(part) == 1:
                refused.append(int(part[0]))
                return
        middle = len(part) // 2
        visit(part[:middle])
        visit(part[middle:])

    visit(np.arange(len(frame)))
    return refused
