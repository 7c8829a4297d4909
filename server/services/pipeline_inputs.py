"""What a set's pipeline takes: rows turned into its input (a float64 matrix or a typed DataFrame), and the
input schema read from a fitted pipeline (Import), where no dataset says what it was fitted on.

Rows here are JSON-ready lists in schema order: a number is a float or None (missing), a string is a str or
None. That is how a typed set's self-check rows are recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from predserve.server.domain import Column, ColumnType, Schema

if TYPE_CHECKING:  # imported where a frame is built: the import probe of a matrix pipeline never needs it
    import pandas as pd

NUMBER, STRING = ColumnType.NUMBER, ColumnType.STRING


def frame_of_rows(schema: Schema, rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """A DataFrame of the schema's columns, in order: numbers float64, strings object, NaN where missing (as
    pandas.read_csv gives it: SimpleImputer takes NaN as missing, None as a category)."""
    import pandas as pd

    data: dict[str, pd.Series] = {}
    for index, column in enumerate(schema.columns):
        values = [row[index] for row in rows]
        if column.type is NUMBER:
            data[column.name] = pd.Series([np.nan if v is None else v for v in values], dtype=np.float64)
        else:  # object, as load_table gives it (pandas 3 would infer its str dtype from an array of text)
            data[column.name] = pd.Series([np.nan if _missing(v) else str(v) for v in values], dtype=object)
    return pd.DataFrame(data, columns=list(schema.names))


def rows_of_frame(frame: pd.DataFrame) -> list[list[Any]]:
    """JSON-ready rows of a DataFrame: NaN and None become None (JSON has no NaN; PostgreSQL's jsonb refuses it)."""
    columns = [frame[name].tolist() for name in frame.columns]
    return [[None if _missing(value) else value for value in row] for row in zip(*columns, strict=True)]


def pipeline_input(schema: Schema | None, rows: Sequence[Sequence[Any]]) -> np.ndarray | pd.DataFrame:
    """What a pipeline recorded with `schema` is given for `rows`: a float64 matrix, as since Phase 4, unless it
    takes a DataFrame (by column name, or with strings)."""
    if schema is None or schema.numeric:
        return np.asarray(rows, dtype=np.float64)
    return frame_of_rows(schema, rows)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# Inference from a fitted pipeline (Import) -----------------------------------------------------------------


def infer_schema(model: Any) -> tuple[Schema | None, dict[str, list[str]]]:
    """The schema a fitted pipeline takes, and the categories its encoders learnt per string column.

    Names come from `feature_names_in_`. A column is a string when an encoder or a constant imputer fitted on it
    learnt strings; a number otherwise. The pipeline takes a DataFrame (by_name) when it was fitted on one and a
    ColumnTransformer selects by name, or when any column holds strings. None: a numbers-only pipeline that takes
    a matrix, whose inputs are numbers named by feature_names, as before typed tables.
    """
    raw_names = getattr(model, "feature_names_in_", None)
    if raw_names is None:
        return None, {}
    names = [str(name) for name in raw_names]
    categories: dict[str, list[str]] = {}
    selects_by_name = False
    for transformer in _column_transformers(model):
        for _, step, selection in getattr(transformer, "transformers_", ()):
            chosen = _selected(selection, names)
            selects_by_name = selects_by_name or _by_name(selection)
            for name, learnt in _string_columns(step, chosen).items():
                categories[name] = learnt
    columns = tuple(Column(name, STRING if name in categories else NUMBER) for name in names)
    if not selects_by_name and not categories:
        return None, {}
    return Schema(columns, by_name=True), categories


def merge_stated(inferred: Schema | None, names: Sequence[str], width: int, stated: Sequence[Column]) -> Schema:
    """The pipeline's schema with the importer's statement applied: their types win, column by column.

    `names` are the pipeline's feature_names_in_ (empty when it was fitted on a matrix) and `width` its
    n_features_in_. Raises ValueError naming the columns when the statement does not fit the pipeline."""
    base = inferred or Schema.numbers(tuple(names) or tuple(f"f{i}" for i in range(width)))
    if not stated:
        return base
    if not names:  # fitted without names: the statement names its columns, in order
        if len(stated) != width:
            raise ValueError(f"the input schema given has {len(stated)} column(s), the pipeline takes {width}")
        return Schema(tuple(stated), by_name=any(c.type is STRING for c in stated))
    unknown = [column.name for column in stated if base.column(column.name) is None]
    if unknown:
        raise ValueError(
            f"the input schema given names column(s) the pipeline does not take: {', '.join(unknown)}; "
            f"it takes {', '.join(base.names)}"
        )
    types = {column.name: column.type for column in stated}
    columns = tuple(Column(c.name, types.get(c.name, c.type)) for c in base.columns)
    return Schema(columns, by_name=base.by_name or any(c.type is STRING for c in columns))


def sample_frame(schema: Schema, categories: dict[str, list[str]], count: int) -> pd.DataFrame:
    """Rows to self-check a typed pipeline with when no dataset is given: spread numbers, learnt categories."""
    generator = np.random.default_rng(0)
    rows: list[list[Any]] = [[] for _ in range(count)]
    for column in schema.columns:
        known = categories.get(column.name) or [""]
        for index, row in enumerate(rows):
            row.append(float(generator.normal()) if column.type is NUMBER else known[index % len(known)])
    return frame_of_rows(schema, rows)


def _column_transformers(model: Any) -> Iterator[Any]:
    # By its fitted attribute, not isinstance: importing sklearn.compose would slow every import probe.
    if hasattr(model, "transformers_"):
        yield model
        return
    for _, step in getattr(model, "steps", ()):
        yield from _column_transformers(step)


def _selected(selection: Any, names: list[str]) -> list[str]:
    """The column names a ColumnTransformer's fitted selection stands for."""
    if isinstance(selection, str):
        return [selection]
    if isinstance(selection, slice):
        return names[selection] if not isinstance(selection.start, str) else _named_slice(selection, names)
    values = list(np.asarray(selection).tolist()) if not isinstance(selection, list) else selection
    if values and all(isinstance(v, bool) for v in values):
        return [name for name, keep in zip(names, values, strict=False) if keep]
    return [v if isinstance(v, str) else names[int(v)] for v in values]


def _named_slice(selection: slice, names: list[str]) -> list[str]:
    start = names.index(selection.start) if selection.start is not None else 0
    stop = names.index(selection.stop) + 1 if selection.stop is not None else len(names)
    return names[start:stop]


def _by_name(selection: Any) -> bool:
    if isinstance(selection, str):
        return True
    if isinstance(selection, slice):
        return isinstance(selection.start, str) or isinstance(selection.stop, str)
    return isinstance(selection, Iterable) and any(isinstance(v, str) for v in selection)


def _string_columns(step: Any, chosen: list[str]) -> dict[str, list[str]]:
    """The columns among `chosen` that a step (or a step of its Pipeline) learnt strings for, and those strings."""
    found: dict[str, list[str]] = {}
    for part in [step, *[s for _, s in getattr(step, "steps", ())]]:
        learnt = getattr(part, "categories_", None)
        if learnt is None and getattr(part, "strategy", None) == "constant":
            statistics = getattr(part, "statistics_", None)
            learnt = None if statistics is None else [[value] for value in np.asarray(statistics).tolist()]
        if learnt is None or len(learnt) != len(chosen):
            continue
        for name, values in zip(chosen, learnt, strict=True):
            strings = [v for v in np.asarray(values, dtype=object).tolist() if isinstance(v, str)]
            if strings:  # an encoder after a constant imputer: its categories, which hold the fill value too
                found[name] = strings
    return found
