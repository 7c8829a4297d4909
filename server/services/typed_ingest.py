"""Typed batches checked against a dataset's schema: named columns of numbers and strings, values missing.

A dataset's first typed batch fixes its schema: the types its columns arrive in, or the types the ingest
declares (`--column-type plan=string`). A later batch must fit it: the same columns by name (in any order),
text that reads as a number in a number column; anything else refuses the batch, naming the row, the column
and the value. Rows are counted from the ingest's first row, as the client numbers them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from predserve.server.domain import Column, ColumnType, Schema, TargetValue
from predserve.server.errors import InvalidArgument
from predserve.server.services.validation import check_feature_names
from predserve.server.storage.tables import TypedRows

# Text a number column reads as 1 and 0 besides numbers (what pyarrow's CSV reader reads as booleans).
_BOOLEANS = {"true": 1.0, "false": 0.0}
_EXACT_IN_FLOAT = 2**53


@dataclass(frozen=True)
class TableColumns:
    """A stream's table: columns by name in the order sent, each a float64 array (NaN where missing) or an
    object array of str (None where missing)."""

    names: tuple[str, ...]
    values: tuple[np.ndarray, ...]

    @property
    def row_count(self) -> int:
        return len(self.values[0]) if self.values else 0


def typed_rows(
    table: TableColumns,
    target_column: str,
    declared: Sequence[Column],
    fixed: Schema | None,
    first_row: int = 0,
) -> TypedRows:
    """The table's features in the schema's order and types (`fixed`, else inferred and `declared`), and its
    targets; InvalidArgument naming the row, the column and the value that does not fit."""
    check_feature_names(table.names, "table column ")
    if not target_column:
        raise InvalidArgument("target_column is required with a table: name the column that holds the target")
    if target_column not in table.names:
        raise InvalidArgument(f"the table has no column {target_column!r} (target_column); it has {list(table.names)}")
    given = {name: values for name, values in zip(table.names, table.values, strict=True) if name != target_column}
    if not given:
        raise InvalidArgument("the table has no feature columns besides the target")
    schema = fixed if fixed is not None else _inferred(given, declared)
    if fixed is not None:
        _check_declared(fixed, declared)
        absent = [name for name in schema.names if name not in given]
        extra = [name for name in given if schema.column(name) is None]
        if absent or extra:
            raise InvalidArgument(
                f"the dataset's columns are {list(schema.names)}, fixed by its first ingest; this batch "
                + "; ".join(
                    part
                    for part in (
                        f"lacks {absent}" if absent else "",
                        f"has the columns {extra} it does not have" if extra else "",
                    )
                    if part
                )
            )
    columns = tuple(_fitted(c, given[c.name], first_row, fixed is not None) for c in schema.columns)
    targets = _targets(dict(zip(table.names, table.values, strict=True))[target_column], first_row)
    return TypedRows(schema, columns, targets)


def _inferred(given: dict[str, np.ndarray], declared: Sequence[Column]) -> Schema:
    types = {name: _type_of(values) for name, values in given.items()}
    for column in declared:
        if column.name not in types:
            raise InvalidArgument(f"column_types names {column.name!r}, which is not a feature column of the table")
        types[column.name] = column.type
    return Schema(tuple(Column(name, kind) for name, kind in types.items()))


def _check_declared(fixed: Schema, declared: Sequence[Column]) -> None:
    for column in declared:
        own = fixed.column(column.name)
        if own is None or own.type is not column.type:
            raise InvalidArgument(
                f"column_types gives {column.name!r} as {column.type.value}, but the dataset's first ingest fixed "
                f"it as {own.type.value if own else 'no column'}: a dataset's column types do not change"
            )


def _type_of(values: np.ndarray) -> ColumnType:
    return ColumnType.NUMBER if values.dtype == np.float64 else ColumnType.STRING


def _fitted(column: Column, values: np.ndarray, first_row: int, fixed: bool) -> np.ndarray:
    whose = " (fixed by the dataset's first ingest)" if fixed else ""
    if column.type is ColumnType.STRING:
        if values.dtype == np.float64:
            present = np.flatnonzero(~np.isnan(values))
            if len(present):
                row = int(present[0])
                raise InvalidArgument(
                    f"row {first_row + row}, column {column.name!r}: the number {_shown(values[row])} in a string "
                    f"column{whose}: send the column as text"
                )
            everything_missing = np.empty(len(values), dtype=object)
            return everything_missing
        return values
    numbers = values if values.dtype == np.float64 else _parsed(column.name, values, first_row, whose)
    infinite = np.flatnonzero(np.isinf(numbers))
    if len(infinite):
        row = int(infinite[0])
        raise InvalidArgument(
            f"row {first_row + row}, column {column.name!r}: {_shown(numbers[row])} is not a finite number"
        )
    return numbers


def _shown(number: float) -> str:
    value = float(number)
    return str(int(value)) if value.is_integer() else repr(value)


def _parsed(name: str, texts: np.ndarray, first_row: int, whose: str) -> np.ndarray:
    """A column sent as text, read as numbers: what the number column of the schema holds."""
    numbers = np.empty(len(texts), dtype=np.float64)
    for row, text in enumerate(texts.tolist()):
        if text is None:
            numbers[row] = math.nan
            continue
        try:
            numbers[row] = _BOOLEANS[text.lower()] if text.lower() in _BOOLEANS else float(text)
        except ValueError:
            raise InvalidArgument(
                f"row {first_row + row}, column {name!r}: {text!r} is not a number, and the column is a "
                f"number column{whose}"
            ) from None
    return numbers


def _targets(values: np.ndarray, first_row: int) -> list[TargetValue]:
    """The target column: labels, or numbers (integers when every one is a whole number, as a CSV reader reads
    such a column); never missing."""
    if values.dtype != np.float64:
        missing = [row for row, value in enumerate(values.tolist()) if value is None or value == ""]
        if missing:
            raise InvalidArgument(f"row {first_row + missing[0]} has no target")
        labels: list[TargetValue] = values.tolist()
        return labels
    absent = np.flatnonzero(~np.isfinite(values))
    if len(absent):
        row = int(absent[0])
        what = "no target" if math.isnan(values[row]) else "a non-finite target"
        raise InvalidArgument(f"row {first_row + row} has {what}")
    if np.all(values == np.round(values)) and (len(values) == 0 or np.abs(values).max() <= _EXACT_IN_FLOAT):
        return [int(v) for v in values.astype(np.int64).tolist()]
    numbers: list[TargetValue] = values.tolist()
    return numbers


def numeric_matrix(rows: TypedRows) -> np.ndarray | None:
    """The rows as a float64 matrix when they are numbers without a missing value (the numbers path keeps them
    as it always has), else None."""
    if not rows.schema.numeric or any(np.isnan(column).any() for column in rows.columns):
        return None
    return np.column_stack(rows.columns) if rows.columns else None


def as_typed(schema: Schema, names: Sequence[str], matrix: np.ndarray, targets: Sequence[TargetValue]) -> TypedRows:
    """Number rows for a typed dataset: its schema must be numbers only, the names (if given) its own."""
    if names and list(names) != list(schema.names):
        raise InvalidArgument(f"the dataset's columns are {list(schema.names)}; these rows give {list(names)}")
    strings = [c.name for c in schema.columns if c.type is not ColumnType.NUMBER]
    if strings:
        raise InvalidArgument(
            f"the dataset has the string columns {strings}: send its rows as a table (predserve ingest --csv)"
        )
    if matrix.shape[1] != len(schema.columns):
        raise InvalidArgument(f"rows of {matrix.shape[1]} features for a dataset of {len(schema.columns)} columns")
    return TypedRows(schema, tuple(matrix[:, i].copy() for i in range(matrix.shape[1])), list(targets))
