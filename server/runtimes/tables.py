"""Typed pipelines as numpy: a fitted ColumnTransformer's preprocessing replayed on named columns, in front of the
linear and tree forms, so that a one-row call costs microseconds instead of a DataFrame and a ColumnTransformer.

A `TableProgram` holds, for each transformer of the ColumnTransformer in its order, the input columns and the
steps (SimpleImputer, StandardScaler, MinMaxScaler, OneHotEncoder, OrdinalEncoder, nested Pipelines of them,
'passthrough'), and the remainder; it turns columns (numbers as float64 with NaN where missing, strings as object
arrays with None) into the float64 matrix the ColumnTransformer would give, with scikit-learn's arithmetic in its
order. Where the pipeline would refuse a row (an unknown category its encoder does not ignore, a missing value
nothing imputes, a value that overflows), the program refuses it too, naming the row and the column.
Every other step leaves the set to the pipeline, and the refusal says which step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

from predserve.server.runtimes.domain import OutsideDomain

Columns = Mapping[str, np.ndarray]

NUMBER_IN = "number"
TEXT_IN = "text"


class Unsupported(ValueError):
    """A step or a setting the program cannot replay exactly; the message names it."""


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _missing_text(values: np.ndarray) -> np.ndarray:
    return np.fromiter(map(_is_missing, values), bool, len(values))


@dataclass(frozen=True)
class Impute:
    """SimpleImputer: every missing cell of column j becomes fill[j] (numbers: NaN cells; text: None cells)."""

    fill: np.ndarray

    def apply(self, block: np.ndarray) -> np.ndarray:
        if block.dtype == object:
            out = block.copy()
            for j in range(block.shape[1]):
                out[_missing_text(block[:, j]), j] = self.fill[j]
            return out
        return np.where(np.isnan(block), self.fill, block)


@dataclass(frozen=True)
class Scale:
    """StandardScaler ((x - mean) / scale) or MinMaxScaler (x * scale + min), as scikit-learn computes them."""

    kind: str  # "standard" or "minmax"
    first: np.ndarray | None  # mean, or MinMaxScaler's scale_
    second: np.ndarray | None  # scale, or MinMaxScaler's min_

    def apply(self, block: np.ndarray) -> np.ndarray:
        if self.kind == "standard":
            if self.first is not None:
                block = block - self.first
            if self.second is not None:
                block = block / self.second
            return block
        assert self.first is not None and self.second is not None
        return block * self.first + self.second


@dataclass(frozen=True)
class Encode:
    """OneHotEncoder (one 0/1 column per category, unknown: all zeros or refused) or OrdinalEncoder (the category's
    index, unknown: unknown_value or refused, missing: encoded_missing_value)."""

    kind: str  # "onehot" or "ordinal"
    categories: tuple[np.ndarray, ...]  # per input column: its categories as text, in scikit-learn's order
    missing_at: tuple[int, ...]  # per input column: the index of the missing-value category, or -1
    ignore_unknown: bool
    unknown_value: float  # ordinal only
    missing_value: float  # ordinal only: what a missing value becomes when it is no category
    # Per input column, each category's index by its text: built once, since a one-row call would spend more on
    # building it than on everything else the block does.
    lookups: tuple[dict[str, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookups = tuple(
            {str(category): index for index, category in enumerate(categories) if index != at}
            for categories, at in zip(self.categories, self.missing_at, strict=True)
        )
        object.__setattr__(self, "lookups", lookups)

    def apply(self, block: np.ndarray | Sequence[Sequence[Any]], names: Sequence[str]) -> np.ndarray:
        """The encoded matrix of a block: an object array, or one sequence of values per column."""
        given: Sequence[Sequence[Any]] = (
            [block[:, j].tolist() for j in range(block.shape[1])] if isinstance(block, np.ndarray) else block
        )
        parts = [self._column(values, j, names[j]) for j, values in enumerate(given)]
        if len(parts) == 1:
            return parts[0]
        return np.hstack(parts) if parts else np.empty((0, 0))

    def _column(self, values: Sequence[Any], j: int, name: str) -> np.ndarray:
        # In Python, not numpy: a call's columns are short, and each numpy operation costs a microsecond.
        lookup, at = self.lookups[j], self.missing_at[j]
        # A missing value never seen in training is unknown to scikit-learn; one seen is its own category to a
        # OneHotEncoder, and encoded_missing_value to an OrdinalEncoder.
        if at < 0:
            if_missing = _UNKNOWN
        else:
            if_missing = at if self.kind == "onehot" else _MISSING
        codes = [
            if_missing if _is_missing(v) else lookup.get(v if type(v) is str else str(v), _UNKNOWN) for v in values
        ]
        if not self.ignore_unknown and _UNKNOWN in codes:
            row = codes.index(_UNKNOWN)
            raise OutsideDomain(row, name, values[row], f"category {values[row]!r} was not seen in training")
        if self.kind == "onehot":
            width = len(self.categories[j])
            out = np.zeros((len(codes), width))
            out.put([row * width + code for row, code in enumerate(codes) if code >= 0], 1.0)
            return out
        meaning = {_UNKNOWN: self.unknown_value, _MISSING: self.missing_value}
        return np.array([meaning.get(code, code) for code in codes], dtype=np.float64).reshape(-1, 1)


_UNKNOWN = -1
_MISSING = -2


Step = Impute | Scale | Encode


@dataclass(frozen=True)
class Block:
    """One transformer of the ColumnTransformer: its input columns and its steps, in order."""

    columns: tuple[str, ...]
    kinds: tuple[str, ...]  # NUMBER_IN or TEXT_IN, per input column
    steps: tuple[Step, ...]

    @property
    def steps_keep_width(self) -> bool:
        """Whether output column j comes from input column j (no one-hot encoder widens the block)."""
        return not any(isinstance(step, Encode) and step.kind == "onehot" for step in self.steps)

    def apply(self, columns: Columns, n_rows: int) -> np.ndarray:
        if self._text_then_encoded:
            return self._apply_to_text(columns)
        text = any(kind == TEXT_IN for kind in self.kinds)
        block = np.empty((n_rows, len(self.columns)), dtype=object if text else np.float64)
        for j, name in enumerate(self.columns):
            block[:, j] = columns[name]
        for step in self.steps:
            if isinstance(step, Encode):
                block = step.apply(block, self.columns)
                continue
            if block.dtype == object and not isinstance(step, Impute):
                block = _as_numbers(block, self.columns)
            block = step.apply(block)
        if block.dtype == object:
            block = _as_numbers(block, self.columns)
        return block

    @cached_property
    def _text_then_encoded(self) -> bool:
        """Text columns only, imputed then encoded: worked as Python lists until the encoder, since numpy gains
        nothing on objects and costs a one-row call most of its time."""
        first = next((i for i, step in enumerate(self.steps) if isinstance(step, Encode)), None)
        return (
            first is not None
            and all(kind == TEXT_IN for kind in self.kinds)
            and all(isinstance(step, Impute) for step in self.steps[:first])
        )

    def _apply_to_text(self, columns: Columns) -> np.ndarray:
        values: list[Sequence[Any]] = [columns[name].tolist() for name in self.columns]
        steps = iter(self.steps)
        for step in steps:
            if isinstance(step, Impute):
                values = [
                    [fill if _is_missing(v) else v for v in column]
                    for column, fill in zip(values, step.fill, strict=True)
                ]
                continue
            assert isinstance(step, Encode)  # the first step that is no Impute (_text_then_encoded)
            block = step.apply(values, self.columns)
            break
        for step in steps:  # after the encoder, numbers
            block = step.apply(block, self.columns) if isinstance(step, Encode) else step.apply(block)
        return block


def _as_numbers(block: np.ndarray, names: Sequence[str]) -> np.ndarray:
    try:
        return block.astype(np.float64)
    except (TypeError, ValueError):
        for j, name in enumerate(names):
            for row, value in enumerate(block[:, j]):
                if not isinstance(value, int | float | np.number) and value is not None:
                    why = "a string where the pipeline computes with numbers"
                    raise OutsideDomain(row, name, value, why) from None
        raise


@dataclass(frozen=True)
class TableProgram:
    """A fitted ColumnTransformer as blocks; `matrix` gives what its transform gives, densely."""

    blocks: tuple[Block, ...]
    inputs: tuple[str, ...]  # every column the ColumnTransformer was fitted on, in order

    def matrix(self, columns: Columns) -> np.ndarray:
        n_rows = len(next(iter(columns.values()))) if columns else 0
        parts = [block.apply(columns, n_rows) for block in self.blocks]
        return np.hstack(parts) if parts else np.empty((n_rows, 0))


def compile_column_transformer(transformer: Any, kinds: Mapping[str, str]) -> TableProgram:
    """The program of a fitted ColumnTransformer selecting columns by name; Unsupported names what is not covered.
    `kinds` says which input columns hold text."""
    if not isinstance(transformer, ColumnTransformer):
        raise Unsupported(f"{type(transformer).__name__} before the estimator (a ColumnTransformer is)")
    inputs = tuple(str(name) for name in getattr(transformer, "feature_names_in_", ()))
    if not inputs:
        raise Unsupported("a ColumnTransformer fitted on an array, not on named columns")
    blocks = []
    for name, step, selection in transformer.transformers_:
        columns = _selected(selection, inputs, name)
        if step == "drop" or not columns:
            continue
        block_kinds = tuple(kinds.get(column, NUMBER_IN) for column in columns)
        blocks.append(Block(columns, block_kinds, _steps(step, name, block_kinds)))
    return TableProgram(tuple(blocks), inputs)


def _selected(selection: Any, inputs: tuple[str, ...], name: str) -> tuple[str, ...]:
    if isinstance(selection, str):
        selection = [selection]
    values = list(np.asarray(selection).reshape(-1)) if not isinstance(selection, slice) else None
    if values is None:
        raise Unsupported(f"transformer {name!r} selects columns by a slice")
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return tuple(column for column, chosen in zip(inputs, values, strict=True) if chosen)
    if all(isinstance(v, (int, np.integer)) for v in values):
        return tuple(inputs[int(v)] for v in values)  # the remainder lists the columns it keeps by index
    if all(isinstance(v, str) for v in values):
        return tuple(values)
    raise Unsupported(f"transformer {name!r} selects columns by {type(values[0]).__name__}")


def _steps(step: Any, name: str, kinds: tuple[str, ...]) -> tuple[Step, ...]:
    if _is_identity(step):
        step = "passthrough"  # a remainder="passthrough" is fitted as an identity FunctionTransformer
    if step == "passthrough":
        if any(kind == TEXT_IN for kind in kinds):
            raise Unsupported(f"transformer {name!r} passes text columns through")
        return ()
    if isinstance(step, Pipeline):
        steps: list[Step] = []
        for inner_name, inner in step.steps:
            if inner is None or inner == "passthrough":
                continue
            steps.extend(_steps(inner, f"{name}/{inner_name}", kinds))
        return tuple(steps)
    return (_step(step, name),)


def _step(step: Any, name: str) -> Step:
    kind = type(step)
    if kind is SimpleImputer:
        if getattr(step, "add_indicator", False) or not _nan_or_none(step.missing_values):
            raise Unsupported(f"SimpleImputer {name!r} with add_indicator or other missing values")
        if step.keep_empty_features is False and np.any(_missing_statistics(step.statistics_)):
            raise Unsupported(f"SimpleImputer {name!r} drops columns that were empty in training")
        return Impute(np.asarray(step.statistics_))
    if kind is StandardScaler:
        mean = np.asarray(step.mean_, dtype=np.float64) if step.with_mean else None
        scale = np.asarray(step.scale_, dtype=np.float64) if step.with_std else None
        return Scale("standard", mean, scale)
    if kind is MinMaxScaler:
        if step.clip:
            raise Unsupported(f"MinMaxScaler {name!r} with clip")
        return Scale("minmax", np.asarray(step.scale_, np.float64), np.asarray(step.min_, np.float64))
    if kind is OneHotEncoder:
        if step.drop_idx_ is not None or getattr(step, "_infrequent_enabled", False):
            raise Unsupported(f"OneHotEncoder {name!r} with drop or infrequent categories")
        return _encoder("onehot", step, step.handle_unknown in ("ignore", "infrequent_if_exist"), 0.0, 0.0)
    if kind is OrdinalEncoder:
        if getattr(step, "_infrequent_enabled", False):
            raise Unsupported(f"OrdinalEncoder {name!r} with infrequent categories")
        ignore = step.handle_unknown == "use_encoded_value"
        unknown = float(step.unknown_value) if ignore else 0.0
        return _encoder("ordinal", step, ignore, unknown, float(step.encoded_missing_value))
    raise Unsupported(f"step {name!r} ({kind.__name__}) has no compiled form")


def _is_identity(step: Any) -> bool:
    return type(step) is FunctionTransformer and step.func is None and not step.validate


def _nan_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _missing_statistics(statistics: np.ndarray) -> np.ndarray:
    if statistics.dtype == object:
        return _missing_text(statistics)
    return np.isnan(statistics)


def _encoder(kind: str, step: Any, ignore: bool, unknown: float, missing: float) -> Encode:
    categories, missing_at = [], []
    for column in step.categories_:
        values = list(column)
        at = next((i for i, v in enumerate(values) if _nan_or_none(v)), -1)
        if any(not isinstance(v, str) for i, v in enumerate(values) if i != at):
            raise Unsupported(f"{type(step).__name__} with categories that are not text")
        categories.append(np.array([str(v) if i != at else "" for i, v in enumerate(values)], dtype=object))
        missing_at.append(at)
    return Encode(kind, tuple(categories), tuple(missing_at), ignore, unknown, missing)
