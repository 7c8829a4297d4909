"""Rows given by column name (dicts, or a pandas DataFrame) as the Table that Predict takes: one array per column.

A column whose values are all numbers (booleans and integers included) or missing travels as numbers, NaN where
missing; a column holding any text travels as strings, with the rows that have no value listed. The server
matches the columns to the model's inputs by name and says precisely what does not fit, so nothing here needs
the model's schema. pandas is never imported: a DataFrame is recognised only when pandas is already loaded.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from predserve.protos import predserve_pb2 as pb


def is_named(rows: Any) -> bool:
    """Whether rows are given by column name (dicts, a DataFrame, a Table) rather than as lists of numbers."""
    if isinstance(rows, pb.Table) or is_frame(rows):
        return True
    return isinstance(rows, Sequence) and len(rows) > 0 and isinstance(rows[0], Mapping)


def is_frame(rows: Any) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(rows, pandas.DataFrame)


def table_message(rows: Any) -> pb.Table:
    """The Table of a list of dicts (a key absent from a dict: a missing value) or of a DataFrame."""
    if isinstance(rows, pb.Table):
        return rows
    if is_frame(rows):
        return _frame_table(rows)
    names: dict[str, None] = {}  # every key, in the order first seen
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {index} is a {type(row).__name__}; give every row as a dict of column values")
        names.update(dict.fromkeys(row))
    table = pb.Table()
    for name in names:
        _add_column(table, str(name), [row.get(name) for row in rows])
    return table


def _frame_table(frame: Any) -> pb.Table:
    import numpy as np  # a dependency of pandas, loaded with it

    table = pb.Table()
    for name in frame.columns:
        series = frame[name]
        if series.dtype.kind in "biuf":  # booleans, integers, floats: one array, NaN where missing
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            table.columns.add(name=str(name)).numbers.values.extend(values.tolist())
        else:
            _add_column(table, str(name), series.tolist())
    return table


def _add_column(table: pb.Table, name: str, values: list[Any]) -> None:
    column = table.columns.add(name=name)
    if not any(isinstance(value, str) for value in values):
        column.numbers.values.extend([_number(name, row, value) for row, value in enumerate(values)])
        return
    texts = column.strings.values
    missing = column.strings.missing
    for row, value in enumerate(values):
        if _is_missing(value):
            texts.append("")
            missing.append(row)
        else:
            texts.append(value if isinstance(value, str) else _text(name, row, value))


def _number(name: str, row: int, value: Any) -> float:
    if _is_missing(value):
        return math.nan
    if isinstance(value, numbers.Real):  # int, float, bool and NumPy's scalars
        return float(value)
    raise TypeError(f"column {name!r}, row {row}: a {type(value).__name__} is neither a number nor a string")


def _text(name: str, row: int, value: Any) -> str:
    """A number in a column of text, as text: the server reads it back as a number where the model takes one,
    and names the row of the text that is not a number."""
    if isinstance(value, numbers.Real):
        return str(value)
    raise TypeError(f"column {name!r}, row {row}: a {type(value).__name__} is neither a number nor a string")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    # pandas' NA and NaT, NumPy's NaN scalars: they equal nothing, themselves included.
    return type(value).__name__ in ("NAType", "NaTType") or (isinstance(value, numbers.Real) and value != value)
