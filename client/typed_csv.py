"""Typed rows for IngestHistory: a CSV file of numbers, strings and empty cells, or rows given by column name
(dicts, a pandas DataFrame), sent as a Table of named columns with the target among them.

A CSV file is read by pyarrow.csv when it is installed (the cli extra): columnar and multi-threaded, the whole
file at once. Without it the standard library's csv module reads it twice, once to tell each column's type and
once to send it. Either way an empty cell is a missing value; a column is a number column when every other cell
is a number or a boolean (true/false, read as 1/0), else a string column, keeping each cell's text; a column
declared a string (`--column-type zip=string`) keeps its text whatever it looks like. A file whose features are
all numbers, with no empty cell and no declared string, goes by client/csvfile.py's faster path of numbers.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predserve.client.batches import MESSAGE_BYTES
from predserve.client.csvfile import CsvFile, CsvFormatError
from predserve.client.named_rows import is_frame, table_message
from predserve.protos import predserve_pb2 as pb

NUMBER = "number"
STRING = "string"
_BOOLEANS = {"true": 1.0, "false": 0.0}
_COLUMN_TYPES = {NUMBER: pb.NUMBER, STRING: pb.STRING}


def column_specs(column_types: Mapping[str, str]) -> list[pb.ColumnSpec]:
    """Declared types as the first ingest sends them; ValueError for a type that is neither."""
    specs = []
    for name, kind in column_types.items():
        if kind not in _COLUMN_TYPES:
            raise ValueError(f"column type {kind!r} of {name!r} is neither 'number' nor 'string'")
        specs.append(pb.ColumnSpec(name=name, type=_COLUMN_TYPES[kind]))
    return specs


@dataclass(frozen=True)
class TableBatch:
    """A batch of typed rows: per column its name and either numbers (NaN where missing) or strings (None where
    missing), the target column among them."""

    names: Sequence[str]
    columns: Sequence[Sequence[Any]]
    numeric: Sequence[bool]
    row_count: int

    def messages(self, header: pb.IngestHistoryRequest) -> list[pb.IngestHistoryRequest]:
        """The batch as a stream: `header` first, with the first rows; each message about MESSAGE_BYTES."""
        row_bytes = sum(8 if numeric else 24 for numeric in self.numeric) or 8
        step = max(1, MESSAGE_BYTES // row_bytes)
        messages = []
        for start in range(0, max(1, self.row_count), step):
            stop = min(start + step, self.row_count)
            message = pb.IngestHistoryRequest()
            for name, values, numeric in zip(self.names, self.columns, self.numeric, strict=True):
                column = message.table.columns.add(name=name)
                part = values[start:stop]
                if numeric:
                    column.numbers.values.extend(part)
                else:
                    column.strings.values.extend(["" if value is None else value for value in part])
                    column.strings.missing.extend(i for i, value in enumerate(part) if value is None)
            messages.append(message)
        messages[0].MergeFrom(header)
        return messages


@dataclass(frozen=True)
class MessageBatch:
    """A batch already built as a Table message (rows given by column name, client/named_rows.py)."""

    table: pb.Table
    row_count: int

    def messages(self, header: pb.IngestHistoryRequest) -> list[pb.IngestHistoryRequest]:
        message = pb.IngestHistoryRequest(table=self.table)
        message.MergeFrom(header)
        return [message]


class NamedRows:
    """A BatchSource of rows by column name: a list of dicts (an absent key is a missing value) or a DataFrame."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def batches(self, batch_rows: int, start_row: int = 0) -> Iterator[MessageBatch]:
        total = len(self.rows)
        for start in range(start_row, total, batch_rows):
            stop = min(start + batch_rows, total)
            part = self.rows.iloc[start:stop] if is_frame(self.rows) else self.rows[start:stop]
            yield MessageBatch(table_message(part), stop - start)


class TypedCsvFile:
    """A BatchSource of a CSV file's typed rows; `csv_file` gives its header, row count and ingest id."""

    prefetch = True

    def __init__(self, csv_file: CsvFile, declared: Mapping[str, str], table: Any = None) -> None:
        self.csv_file = csv_file
        self.declared = dict(declared)
        self.table = table  # pyarrow's, when it read the file

    def batches(self, batch_rows: int, start_row: int = 0) -> Iterator[TableBatch]:
        if self.table is not None:
            yield from _arrow_batches(self.table, batch_rows, start_row)
        else:
            yield from self._record_batches(batch_rows, start_row)

    def _record_batches(self, batch_rows: int, start_row: int) -> Iterator[TableBatch]:
        path = self.csv_file.path
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            numeric = _numeric_columns(path, header, self.declared)
            records = ((reader.line_num, record) for record in reader if record)
            for _ in itertools.islice(records, start_row):
                pass
            while block := list(itertools.islice(records, batch_rows)):
                columns: list[list[Any]] = [[] for _ in header]
                for line, record in block:
                    if len(record) != len(header):
                        raise CsvFormatError(f"{path}:{line}: {len(record)} fields, the header has {len(header)}")
                    for values, cell, is_number in zip(columns, record, numeric, strict=True):
                        values.append(_number(cell) if is_number else (cell if cell != "" else None))
                yield TableBatch(header, columns, numeric, len(block))


def typed_source(path: Path | str, target_column: str, column_types: Mapping[str, str]) -> CsvFile | TypedCsvFile:
    """The file as the batches to send: numbers by CsvFile when they are all numbers and present, else typed."""
    csv_file = CsvFile(path, target_column)
    unknown = [name for name in column_types if name not in csv_file.feature_names]
    if unknown:
        raise CsvFormatError(f"{csv_file.path} has no feature column {unknown[0]!r} (--column-type)")
    column_specs(column_types)
    strings = {name for name, kind in column_types.items() if kind == STRING}
    try:
        from pyarrow import csv as arrow_csv
    except ImportError:
        plain = _plain_numbers_by_reading(csv_file)
        return csv_file if plain and not strings else TypedCsvFile(csv_file, column_types)
    table = _read_with_arrow(arrow_csv, csv_file.path, strings)
    features = [table.column(name) for name in csv_file.feature_names]
    if not strings and all(_plain_arrow_numbers(column) for column in features):
        return csv_file
    return TypedCsvFile(csv_file, column_types, table)


def _read_with_arrow(arrow_csv: Any, path: Path, strings: set[str]) -> Any:
    import pyarrow as pa

    options = arrow_csv.ConvertOptions(
        strings_can_be_null=True,
        null_values=[""],
        true_values=["true", "True", "TRUE"],
        false_values=["false", "False", "FALSE"],
        column_types={name: pa.string() for name in strings},
    )
    try:
        return arrow_csv.read_csv(path, convert_options=options)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise CsvFormatError(f"{path}: {exc}") from None


def _plain_arrow_numbers(column: Any) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)) and column.null_count == 0


def _arrow_batches(table: Any, batch_rows: int, start_row: int) -> Iterator[TableBatch]:
    import pyarrow as pa

    for start in range(start_row, table.num_rows, batch_rows):
        part = table.slice(start, batch_rows)
        columns: list[Sequence[Any]] = []
        numeric: list[bool] = []
        for column in part.columns:
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                columns.append(column.to_pylist())
                numeric.append(False)
            elif pa.types.is_null(column.type):  # a column of empty cells only: numbers, all missing
                columns.append([math.nan] * part.num_rows)
                numeric.append(True)
            elif (
                pa.types.is_integer(column.type)
                or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type)
            ):
                floats = column.cast(pa.float64()).to_numpy()  # NaN where missing
                columns.append(floats.tolist())
                numeric.append(True)
            else:  # dates, times: their text, as a string column
                columns.append([None if v is None else str(v) for v in column.to_pylist()])
                numeric.append(False)
        yield TableBatch(part.column_names, columns, numeric, part.num_rows)


def _number(cell: str) -> float:
    if cell == "":
        return math.nan
    lowered = cell.strip().lower()
    return _BOOLEANS[lowered] if lowered in _BOOLEANS else float(cell)


def _is_number(cell: str) -> bool:
    try:
        _number(cell)
    except ValueError:
        return False
    return True


def _numeric_columns(path: Path, header: Sequence[str], declared: Mapping[str, str]) -> list[bool]:
    """Which columns are number columns: every cell a number, a boolean or empty, unless declared a string."""
    numeric = [declared.get(name) != STRING for name in header]
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for record in reader:
            for index, cell in enumerate(record[: len(header)]):
                if numeric[index] and not _is_number(cell):
                    numeric[index] = False
            if not any(numeric):
                break
    return numeric


def _plain_numbers_by_reading(csv_file: CsvFile) -> bool:
    """Whether every feature cell of the file is a number (no empty cell, no boolean): CsvFile's path then
    sends it as it always has."""
    with open(csv_file.path, newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for record in reader:
            for index, cell in enumerate(record):
                if index == csv_file.target_index:
                    continue
                try:
                    float(cell)
                except ValueError:
                    return False
    return True
