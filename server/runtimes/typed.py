"""A typed pipeline's compiled form: its ColumnTransformer as a TableProgram (server/runtimes/tables.py), then the
linear or tree form of its estimator on the matrix the program gives. It answers named columns (numbers as
float64 with NaN where missing, strings as object arrays with None) as `pipeline.predict(DataFrame)` does, and
refuses the rows the pipeline refuses, naming the row and the column."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import sklearn
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from threadpoolctl import ThreadpoolController

from predserve.server.runtimes import linear, trees
from predserve.server.runtimes.base import Refusal
from predserve.server.runtimes.domain import OutsideDomain
from predserve.server.runtimes.stored import pack, require, unpack
from predserve.server.runtimes.tables import (
    NUMBER_IN,
    TEXT_IN,
    Block,
    Columns,
    Encode,
    Impute,
    Scale,
    Step,
    TableProgram,
    Unsupported,
    compile_column_transformer,
)

FORMAT = "table"
PREFIX = FORMAT + "-"
# The estimator's own check of the matrix it receives: LogisticRegression and Ridge refuse NaN and infinity; the
# tree forms check theirs (a forest's float32 cast) themselves; histogram boosting takes both.
FINITE = "finite"
NONE = "none"


class TableRuntime:
    most_rows: int | None = None

    def __init__(self, program: TableProgram, inner: Any, check: str, estimator: Any = None) -> None:
        self.program = program
        self.inner = inner
        self.check = check
        self.name = PREFIX + inner.name
        self.version = inner.version
        # Where the estimator's form is slower than scikit-learn (trees past `inner.most_rows` rows), the pipeline's
        # own fitted estimator answers on the program's matrix: still no DataFrame nor ColumnTransformer per call.
        self.estimator = estimator
        self.most_rows = inner.most_rows if estimator is None else None

    def with_estimator(self, estimator: Any) -> TableRuntime:
        """This form, answering large calls with `estimator` (the pipeline's last step) on the program's matrix.
        Only for a program proven to give exactly the matrix the pipeline's own steps give (`program_matches`),
        so that the estimator sees what it sees inside the pipeline."""
        return TableRuntime(self.program, self.inner, self.check, estimator)

    def _matrix(self, columns: Columns) -> tuple[np.ndarray, list[tuple[int, Block]]]:
        n_rows = len(next(iter(columns.values()))) if columns else 0
        parts, starts, start = [], [], 0
        for block in self.program.blocks:
            part = block.apply(columns, n_rows)
            if self.check == FINITE:
                _require_finite(part, block, columns)
            parts.append(part)
            starts.append((start, block))
            start += part.shape[1]
        return (np.hstack(parts) if parts else np.empty((n_rows, 0))), starts

    def _call(self, method: str, columns: Columns) -> Any:
        matrix, starts = self._matrix(columns)
        try:
            if self.estimator is not None and self.inner.most_rows is not None and len(matrix) > self.inner.most_rows:
                return self._estimator_answer(method, matrix)
            return getattr(self.inner, method)(matrix)
        except OutsideDomain as refusal:  # the estimator's own check: name the column the caller sent
            if not isinstance(refusal.feature, int):
                raise
            start, block = next((s, b) for s, b in reversed(starts) if s <= refusal.feature)
            width = len(block.columns)
            offset = refusal.feature - start
            name = block.columns[offset] if offset < width and block.steps_keep_width else block.columns[0]
            raise OutsideDomain(refusal.row, name, columns[name][refusal.row], refusal.why) from refusal

    def _estimator_answer(self, method: str, matrix: np.ndarray) -> Any:
        self.inner.require_in_domain(matrix, matrix)  # the estimator's own refusals, located as the form's are
        # One OpenMP thread, for this calling thread only: the server's threads are its parallelism, and a
        # HistGradientBoosting predict of 1,000 rows took 21 ms with two threads and 8 ms with one while the other
        # core was busy, as it is under load (7 ms and 5 ms on an idle machine). skip_parameter_validation: the
        # estimator was validated when it was fitted.
        with (
            _openmp_threads().limit(limits=1, user_api="openmp"),
            sklearn.config_context(skip_parameter_validation=True),
        ):
            if method == "predict":
                return np.asarray(self.estimator.predict(matrix))
            probabilities = self.estimator.predict_proba(matrix) if hasattr(self.estimator, "classes_") else None
            if method == "predict_proba":
                return probabilities
            return np.asarray(self.estimator.predict(matrix)), probabilities

    def predict(self, columns: Columns) -> np.ndarray:
        return self._call("predict", columns)  # type: ignore[no-any-return]

    def predict_proba(self, columns: Columns) -> np.ndarray | None:
        return self._call("predict_proba", columns)  # type: ignore[no-any-return]

    def predict_both(self, columns: Columns) -> tuple[np.ndarray, np.ndarray | None]:
        return self._call("predict_both", columns)  # type: ignore[no-any-return]

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "inputs": np.array(self.program.inputs, dtype=str),
            "inner_name": np.array(self.inner.name),
            "inner": np.frombuffer(self.inner.to_bytes(), dtype=np.uint8),
            "check": np.array(self.check),
            "blocks": np.array(len(self.program.blocks)),
        }
        for i, block in enumerate(self.program.blocks):
            arrays[f"b{i}.columns"] = np.array(block.columns, dtype=str)
            arrays[f"b{i}.kinds"] = np.array(block.kinds, dtype=str)
            arrays[f"b{i}.steps"] = np.array(len(block.steps))
            for k, step in enumerate(block.steps):
                arrays.update(_step_arrays(f"b{i}.s{k}.", step))
        return pack(FORMAT, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> TableRuntime:
        arrays = unpack(FORMAT, data)
        inputs, inner_name, inner_bytes, check, count = require(
            arrays, FORMAT, "inputs", "inner_name", "inner", "check", "blocks"
        )
        if str(check) not in (FINITE, NONE) or inner_bytes.dtype != np.uint8:
            raise ValueError(f"corrupt {FORMAT} runtime data: check {check!r}, inner {inner_bytes.dtype}")
        inner = _load_inner(str(inner_name), inner_bytes.tobytes())
        blocks = []
        for i in range(int(count)):
            columns, kinds, steps = require(arrays, FORMAT, f"b{i}.columns", f"b{i}.kinds", f"b{i}.steps")
            if set(map(str, kinds)) - {NUMBER_IN, TEXT_IN} or len(kinds) != len(columns):
                raise ValueError(f"corrupt {FORMAT} runtime data: block {i} kinds {list(kinds)}")
            blocks.append(
                Block(
                    tuple(map(str, columns)),
                    tuple(map(str, kinds)),
                    tuple(_step_of(arrays, f"b{i}.s{k}.") for k in range(int(steps))),
                )
            )
        return cls(TableProgram(tuple(blocks), tuple(map(str, inputs))), inner, str(check))


@functools.cache
def _openmp_threads() -> ThreadpoolController:
    """The process's thread pools, found once: finding them costs milliseconds, limiting them 30 µs."""
    return ThreadpoolController()


def compile_typed(pipeline: BaseEstimator, text_columns: set[str]) -> TableRuntime | Refusal:
    """The compiled form of a Pipeline(ColumnTransformer by name, estimator), or why none."""
    if not isinstance(pipeline, Pipeline):
        return Refusal(f"no compiled form for a typed {type(pipeline).__name__} outside a Pipeline")
    steps = [(name, step) for name, step in pipeline.steps if step is not None and step != "passthrough"]
    if len(steps) != 2:
        names = ", ".join(f"{name} ({type(step).__name__})" for name, step in steps)
        return Refusal(f"no compiled form for a typed pipeline but a ColumnTransformer and an estimator: {names}")
    (_, transformer), (_, estimator) = steps
    try:
        kinds = {name: TEXT_IN if name in text_columns else NUMBER_IN for name in transformer.feature_names_in_}
        program = compile_column_transformer(transformer, kinds)
    except Unsupported as exc:
        return Refusal(f"no compiled form: {exc}")
    inner: Any
    try:
        if type(estimator) in (LogisticRegression, Ridge):  # exact types, as compile.py's families
            if type(estimator) is Ridge and estimator.coef_.ndim != 1:
                return Refusal("no compiled form for Ridge with several targets")
            inner, check = linear.LinearRuntime.of(estimator, None), FINITE
        else:
            inner, check = trees.TreeliteRuntime.of(estimator, None), NONE
    except trees.UnsupportedTrees as exc:
        return Refusal(f"no compiled form for this {type(estimator).__name__}: {exc}")
    except Exception as exc:  # a conversion failing is a reason to serve the pipeline
        return Refusal(f"compiling {type(estimator).__name__} failed: {type(exc).__name__}: {exc}")
    return TableRuntime(program, inner, check)


def _load_inner(name: str, data: bytes) -> Any:
    if name == linear.FORMAT:
        return linear.LinearRuntime.from_bytes(data)
    if name == trees.FORMAT:
        return trees.TreeliteRuntime.from_bytes(data)
    raise ValueError(f"corrupt {FORMAT} runtime data: unknown estimator form {name!r}")


def _require_finite(part: np.ndarray, block: Block, columns: Mapping[str, np.ndarray]) -> None:
    finite = np.isfinite(part)
    if finite.all():
        return
    row, j = (int(i) for i in np.argwhere(~finite)[0])
    name = block.columns[j] if block.steps_keep_width else block.columns[0]
    value = part[row, j]
    why = (
        "a missing value, which nothing in the pipeline imputes and the estimator refuses"
        if np.isnan(value)
        else "infinite after the pipeline's scaling, which the estimator refuses"
    )
    raise OutsideDomain(row, name, columns[name][row], why)


def _step_arrays(prefix: str, step: Step) -> dict[str, np.ndarray]:
    if isinstance(step, Impute):
        text = step.fill.dtype == object
        fill = np.array([str(v) for v in step.fill], dtype=str) if text else np.asarray(step.fill, np.float64)
        return {prefix + "type": np.array("impute"), prefix + "fill": fill}
    if isinstance(step, Scale):
        arrays = {prefix + "type": np.array("scale"), prefix + "kind": np.array(step.kind)}
        for key, value in (("first", step.first), ("second", step.second)):
            if value is not None:
                arrays[prefix + key] = value
        return arrays
    arrays = {
        prefix + "type": np.array("encode"),
        prefix + "kind": np.array(step.kind),
        prefix + "missing_at": np.array(step.missing_at, dtype=np.int64),
        prefix + "numbers": np.array([step.ignore_unknown, step.unknown_value, step.missing_value], np.float64),
        prefix + "count": np.array(len(step.categories)),
    }
    for j, categories in enumerate(step.categories):
        arrays[f"{prefix}categories{j}"] = np.array([str(c) for c in categories], dtype=str)
    return arrays


def _step_of(arrays: Mapping[str, np.ndarray], prefix: str) -> Step:
    kind = str(require(arrays, FORMAT, prefix + "type")[0])
    if kind == "impute":
        (fill,) = require(arrays, FORMAT, prefix + "fill")
        return Impute(fill.astype(object) if fill.dtype.kind == "U" else fill.astype(np.float64))
    if kind == "scale":
        (how,) = require(arrays, FORMAT, prefix + "kind")
        if str(how) not in ("standard", "minmax"):
            raise ValueError(f"corrupt {FORMAT} runtime data: scale {how!r}")
        return Scale(str(how), arrays.get(prefix + "first"), arrays.get(prefix + "second"))
    if kind != "encode":
        raise ValueError(f"corrupt {FORMAT} runtime data: step {kind!r}")
    how, missing_at, numbers, count = require(
        arrays, FORMAT, *(prefix + key for key in ("kind", "missing_at", "numbers", "count"))
    )
    if str(how) not in ("onehot", "ordinal") or numbers.shape != (3,) or missing_at.shape != (int(count),):
        raise ValueError(f"corrupt {FORMAT} runtime data: encoder {how!r}")
    categories = tuple(require(arrays, FORMAT, f"{prefix}categories{j}")[0].astype(object) for j in range(int(count)))
    return Encode(
        str(how),
        categories,
        tuple(int(a) for a in missing_at),
        bool(numbers[0]),
        float(numbers[1]),
        float(numbers[2]),
    )
