"""Named, typed columns as a caller sends them to Predict, matched by name to a model's input schema.

Every transport (predserve.v1's Table, V2's one input per column) decodes into an InputTable; this module
matches it to the schema, in any order, and builds what the pipeline takes: a float64 matrix for a model of
numbers only, a pandas DataFrame in schema order for a typed one. It also says which row and column a pipeline
refused, when it refuses a table.

Rules chosen here:
- A column the model does not take is refused by name: a misspelt column would otherwise be dropped and its
  values silently become missing ones.
- A number column may arrive as text ("30", read as float reads it), never the other way: a number sent for a
  string column is refused, since 1 and 1.0 would be different categories.
- A column with every value missing fits either type.
- A missing value is NaN in the DataFrame, strings included: pandas' own marker, the one SimpleImputer and the
  encoders recognise. None is not: SimpleImputer(missing_values=np.nan) leaves it in place as a category.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predserve.server.domain import Column, ColumnType, Schema
from predserve.server.errors import InvalidArgument
from predserve.server.services.validation import check_feature_name

# Characters of a pipeline's own refusal quoted back to the caller.
_REASON_CHARS = 200


@dataclass(frozen=True)
class NumberColumn:
    name: str
    values: np.ndarray  # float64; NaN where a row has no value


@dataclass(frozen=True)
class StringColumn:
    name: str
    values: Sequence[str]  # one per row, whatever stands where a row has no value
    missing: Sequence[int] = ()  # the rows (from 0) without a value


InputColumn = NumberColumn | StringColumn


@dataclass(frozen=True)
class InputTable:
    """Columns of equal length with unique names, as sent: not yet matched to any schema."""

    columns: tuple[InputColumn, ...]
    rows: int

    @classmethod
    def of(cls, columns: Sequence[InputColumn]) -> InputTable:
        if not columns:
            raise InvalidArgument("the table has no columns")
        seen: set[str] = set()
        for index, column in enumerate(columns):
            if not column.name:
                raise InvalidArgument(f"column {index} of the table has no name")
            check_feature_name("column", column.name)
            if column.name in seen:
                raise InvalidArgument(f"column {column.name!r} appears twice in the table")
            seen.add(column.name)
        first = columns[0]
        rows = len(first.values)
        for column in columns[1:]:
            if len(column.values) != rows:
                raise InvalidArgument(
                    f"columns of different lengths: {first.name!r} has {rows} rows, "
                    f"{column.name!r} has {len(column.values)}"
                )
        for column in columns:
            if isinstance(column, StringColumn) and column.missing and max(column.missing) >= rows:
                raise InvalidArgument(
                    f"column {column.name!r} marks row {max(column.missing)} missing, but the table has {rows} rows"
                )
        if rows == 0:
            raise InvalidArgument("no rows given")
        return cls(tuple(columns), rows)


def describe_schema(schema: Schema) -> str:
    return ", ".join(f"{column.name} ({column.type.value})" for column in schema.columns)


def rows_refused(model_type: str, schema: Schema) -> InvalidArgument:
    """Rows of numbers sent to a model that takes named, typed columns."""
    return InvalidArgument(
        f"model type {model_type!r} takes named, typed columns: {describe_schema(schema)}; send a table with these "
        "columns (V2: one input per column, named as the column), not rows of numbers"
    )


def table_matrix(model_type: str, schema: Schema, table: InputTable) -> np.ndarray:
    """The table as the float64 matrix a numbers-only pipeline takes, its columns in schema order. Such a
    pipeline takes no missing values, as with rows."""
    matrix = np.empty((table.rows, len(schema.columns)), dtype=np.float64)
    for index, (wanted, given) in enumerate(_matched(model_type, schema, table)):
        values = _numbers(wanted, given)
        absent = ~np.isfinite(values)
        if absent.any():
            row = int(np.flatnonzero(absent)[0])
            what = "has no value" if math.isnan(values[row]) else f"holds {values[row]!r}"
            raise InvalidArgument(
                f"column {wanted.name!r}{_row(row, table.rows)} {what}: model type {model_type!r} takes a finite "
                "number in every column"
            )
        matrix[:, index] = values
    return matrix


def table_columns(model_type: str, schema: Schema, table: InputTable) -> dict[str, np.ndarray]:
    """The table's columns in schema order, as a compiled form takes them: numbers float64 and strings object,
    NaN where a value is missing; a number must be finite (or missing), as in rows."""
    columns: dict[str, np.ndarray] = {}
    for wanted, given in _matched(model_type, schema, table):
        if wanted.type is ColumnType.NUMBER:
            values = _numbers(wanted, given)
            infinite = np.isinf(values)
            if infinite.any():
                row = int(np.flatnonzero(infinite)[0])
                raise InvalidArgument(
                    f"column {wanted.name!r}{_row(row, table.rows)} holds {values[row]!r}: a number is finite, "
                    "or missing (NaN)"
                )
            columns[wanted.name] = values
        else:
            columns[wanted.name] = _strings(wanted, given)
    return columns


def columns_frame(columns: dict[str, np.ndarray]) -> Any:
    """The DataFrame a typed pipeline takes for `table_columns`' columns."""
    import pandas as pd  # the server's dependency, imported once a typed model is called, not at start-up

    # A Series of dtype object: pandas would otherwise turn an array of str into its own string dtype.
    data = {
        name: values if values.dtype == np.float64 else pd.Series(values, dtype=object, copy=False)
        for name, values in columns.items()
    }
    return pd.DataFrame(data, copy=False)


def _matched(model_type: str, schema: Schema, table: InputTable) -> list[tuple[Column, InputColumn]]:
    given = {column.name: column for column in table.columns}
    unknown = [column.name for column in table.columns if schema.column(column.name) is None]
    if unknown:
        raise InvalidArgument(
            f"column {unknown[0]!r} is not an input of model type {model_type!r}, which takes {describe_schema(schema)}"
        )
    absent = [column for column in schema.columns if column.name not in given]
    if absent:
        names = ", ".join(f"{column.name!r} ({column.type.value})" for column in absent)
        what = "column" if len(absent) == 1 else "columns"
        raise InvalidArgument(f"{what} {names} missing: model type {model_type!r} takes {describe_schema(schema)}")
    return [(column, given[column.name]) for column in schema.columns]


def _numbers(wanted: Column, given: InputColumn) -> np.ndarray:
    if isinstance(given, NumberColumn):
        return given.values
    rows = len(given.values)
    missing = set(given.missing)
    values = np.full(rows, np.nan)
    for row, text in enumerate(given.values):
        if row in missing:
            continue
        try:
            values[row] = float(text)
        except ValueError:
            raise InvalidArgument(
                f"column {wanted.name!r} takes numbers;{_row(row, rows)} holds the string {text!r}"
            ) from None
    return values


def _strings(wanted: Column, given: InputColumn) -> np.ndarray:
    if isinstance(given, NumberColumn):
        present = np.flatnonzero(~np.isnan(given.values))
        if present.size:
            row = int(present[0])
            raise InvalidArgument(
                f"column {wanted.name!r} takes strings;{_row(row, len(given.values))} holds the number "
                f"{float(given.values[row])!r}"
            )
        return np.full(len(given.values), np.nan, dtype=object)
    values = np.array(given.values, dtype=object)
    if given.missing:
        values[np.asarray(given.missing, dtype=np.intp)] = np.nan
    return values


def _row(row: int, rows: int) -> str:
    """' row N' in a table of several rows; nothing for one row, where the row goes without saying."""
    return f" row {row}" if rows > 1 else ""


def refusal_message(
    pipeline: Any, schema: Schema, frame: Any, refuse: Callable[[Any], bool], error: Exception
) -> str | None:
    """Where a typed pipeline refused a table: the first row it refuses (halving the table, whose rows a
    pipeline answers independently), then the column whose value it cannot take: among the missing values and
    the strings, the one whose replacement by a value the pipeline knows makes it answer. None when no row on
    its own is refused. Runs only after a refusal, so answered calls pay nothing for it."""
    low, high = 0, len(frame)
    while high - low > 1:
        middle = (low + high) // 2
        if refuse(frame.iloc[low:middle]):
            high = middle
        else:
            low = middle
    one = frame.iloc[low : low + 1].copy()
    if not refuse(one):
        return None
    reason = _reason(error)
    row = _row(low, len(frame))
    for column in schema.columns:
        position = one.columns.get_loc(column.name)
        value = one.iat[0, position]
        absent = _is_missing(value)
        if column.type is ColumnType.NUMBER and not absent:
            continue
        one.iat[0, position] = _stand_in(pipeline, column, frame)
        if not refuse(one):
            if absent:
                return f"column {column.name!r}{row} has no value, and this pipeline cannot fill one in ({reason})"
            return f"column {column.name!r}{row}: the pipeline does not take {value!r} ({reason})"
    return f"the pipeline refuses{row or ' the row'} ({reason})"


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _stand_in(pipeline: Any, column: Column, frame: Any) -> object:
    """A value the pipeline very likely takes in this column: 0.0 for a number; for a string a category its
    encoder was fitted on, else another value of the column in this table, else ""."""
    if column.type is ColumnType.NUMBER:
        return 0.0
    known = _known_category(pipeline, column.name)
    if known is not None:
        return known
    present = frame[column.name].dropna()
    return str(present.iloc[0]) if len(present) else ""


def _known_category(pipeline: Any, name: str) -> str | None:
    """A category of `name` from the encoder a fitted ColumnTransformer routes it to, if any."""
    for step in _steps(pipeline):
        for _, transformer, columns in getattr(step, "transformers_", ()):
            routed = [columns] if isinstance(columns, str) else list(columns) if _is_list(columns) else []
            if name not in routed:
                continue
            position = routed.index(name)
            for inner in _steps(transformer):
                categories = getattr(inner, "categories_", None)
                if categories is not None and position < len(categories):
                    return next((str(c) for c in categories[position] if isinstance(c, str)), None)
    return None


def _steps(estimator: Any) -> list[Any]:
    return [step for _, step in estimator.steps] if hasattr(estimator, "steps") else [estimator]


def _is_list(columns: Any) -> bool:
    return isinstance(columns, list | tuple | np.ndarray)


def _reason(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."
