"""Batch scoring: a CSV file's rows sent to Predict by column name, a chunk per call, and the answers written
beside them as another CSV file (the input's columns, then the prediction and, when asked, a probability per
class).

The file is read with pyarrow's streaming CSV reader when pyarrow is installed (`predserve[cli]`), else with the
csv module; every cell is read as the text it is, so that the output repeats the input exactly. An empty cell is
a missing value. A column the model takes as numbers is converted here, where a cell that is not a number can be
named by its line; a column of text, or every column when the model's schema is not known, goes as text, which
the server reads as numbers where the model takes numbers. Columns of the file the model does not take (an id,
the target) are written out but not sent.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from predserve.client.calls import target_value
from predserve.client.csvfile import CsvFormatError
from predserve.client.errors import Overloaded
from predserve.protos import predserve_pb2 as pb

NUMBER, STRING = "number", "string"
# Rows per Predict call; fewer when the server's --max-rows-per-request is lower (it says so, and is obeyed).
SCORING_ROWS = 10_000
_ROW_LIMIT = re.compile(r"limit of (\d+) rows per request")


@dataclass(frozen=True)
class Chunk:
    first_line: int  # the file's line of the chunk's first row (the header is line 1)
    texts: list[list[str]]  # the cells of each column, as read
    table: pb.Table  # what Predict is sent

    @property
    def rows(self) -> int:
        return len(self.texts[0]) if self.texts else 0


class ScoringCsv:
    """A CSV file with a header row, read a chunk at a time as Tables for a model whose column types are `types`
    (name: "number" or "string"; None when not known: every column goes as text)."""

    def __init__(self, path: Path | str, types: Mapping[str, str] | None) -> None:
        self.path = Path(path)
        with open(self.path, newline="") as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise CsvFormatError(f"{self.path} is empty")
        self.header = header
        self.types = types
        self.sent = [name for name in header if types is None or name in types]

    def count_rows(self) -> int:
        """Lines after the header: the rows, unless cells hold line breaks."""
        with open(self.path, "rb") as handle:
            lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
        return max(lines - 1, 0)

    def chunks(self, rows: int) -> Iterator[Chunk]:
        line = 2
        for texts in _read_columns(self.path, self.header, rows):
            yield Chunk(line, texts, self._table(texts, line))
            line += len(texts[0])

    def _table(self, texts: list[list[str]], first_line: int) -> pb.Table:
        table = pb.Table()
        for index, name in enumerate(self.header):
            if name not in self.sent:
                continue
            column = table.columns.add(name=name)
            if self.types is not None and self.types[name] == NUMBER:
                column.numbers.values.extend(self._numbers(name, texts[index], first_line))
            else:
                column.strings.values.extend(texts[index])
                column.strings.missing.extend(row for row, text in enumerate(texts[index]) if text == "")
        return table

    def _numbers(self, name: str, texts: list[str], first_line: int) -> list[float]:
        values = []
        for row, text in enumerate(texts):
            if text == "":
                values.append(math.nan)
                continue
            try:
                values.append(float(text))
            except ValueError:
                raise CsvFormatError(
                    f"{self.path}:{first_line + row}: column {name!r} holds {text!r}, and the model takes numbers there"
                ) from None
        return values


def _read_columns(path: Path, header: Sequence[str], rows: int) -> Iterator[list[list[str]]]:
    """The file's cells as text, `rows` rows at a time, column by column."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
    except ImportError:
        yield from _read_with_csv(path, len(header), rows)
        return
    options = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in header}, strings_can_be_null=False, quoted_strings_can_be_null=False
    )
    pending: list[list[str]] = [[] for _ in header]
    try:
        reader = pa_csv.open_csv(path, convert_options=options)
        for batch in reader:
            for index, column in enumerate(batch.columns):
                pending[index].extend(column.to_pylist())
            while len(pending[0]) >= rows:
                yield [column[:rows] for column in pending]
                pending = [column[rows:] for column in pending]
    except pa.ArrowInvalid as exc:
        raise CsvFormatError(f"{path}: {exc}") from None
    if pending[0]:
        yield pending


def _read_with_csv(path: Path, width: int, rows: int) -> Iterator[list[list[str]]]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        pending: list[list[str]] = [[] for _ in range(width)]
        for row in reader:
            if not row:
                continue
            if len(row) != width:
                raise CsvFormatError(f"{path}:{reader.line_num}: {len(row)} cells, the header has {width}")
            for index, cell in enumerate(row):
                pending[index].append(cell)
            if len(pending[0]) == rows:
                yield pending
                pending = [[] for _ in range(width)]
        if pending[0]:
            yield pending


def schema_types(specs: Sequence[pb.ColumnSpec]) -> dict[str, str] | None:
    """A model's input schema as column types; None when the server lists none (a server before typed tables)."""
    types = {spec.name: {pb.NUMBER: NUMBER, pb.STRING: STRING}.get(spec.type, STRING) for spec in specs}
    return types or None


@dataclass
class ScoringResult:
    rows: int = 0
    model_type: str = ""
    prediction_set_id: int = 0
    classes: tuple[Any, ...] = ()


def score(
    source: ScoringCsv,
    predict: Callable[[pb.Table], pb.PredictResponse],
    out: IO[str],
    include_probabilities: bool = False,
    rows_per_call: int = SCORING_ROWS,
    progress: Callable[[int], None] | None = None,
) -> ScoringResult:
    """Sends every chunk to `predict` and writes each row with its answer to `out` (CSV). A chunk the server
    refuses as more rows than it takes per request is sent again in pieces of its limit."""
    writer = csv.writer(out, lineterminator="\n")
    result = ScoringResult()
    wrote_header = False
    for chunk in source.chunks(rows_per_call):
        for answer, texts in _answers(chunk, predict):
            if not wrote_header:
                result.classes = tuple(target_value(label) for label in answer.classes)
                probabilities = [f"probability_{label}" for label in result.classes] if include_probabilities else []
                writer.writerow([*source.header, "prediction", *probabilities])
                wrote_header = True
            result.model_type, result.prediction_set_id = answer.model_type, answer.prediction_set_id
            for row, prediction in enumerate(answer.predictions):
                cells = [column[row] for column in texts]
                extra = [repr(p) for p in prediction.probabilities] if include_probabilities else []
                writer.writerow([*cells, target_value(prediction.value), *extra])
            result.rows += len(answer.predictions)
            if progress is not None:
                progress(result.rows)
    if not wrote_header:
        writer.writerow([*source.header, "prediction"])
    return result


def _answers(
    chunk: Chunk, predict: Callable[[pb.Table], pb.PredictResponse]
) -> Iterator[tuple[pb.PredictResponse, list[list[str]]]]:
    try:
        yield predict(chunk.table), chunk.texts
        return
    except Overloaded as exc:
        limit = _ROW_LIMIT.search(exc.details)
        if limit is None or int(limit.group(1)) >= chunk.rows:
            raise
        rows = int(limit.group(1))
    for start in range(0, chunk.rows, rows):
        texts = [column[start : start + rows] for column in chunk.texts]
        yield predict(_rows_of(chunk.table, start, start + rows)), texts


def _rows_of(table: pb.Table, start: int, stop: int) -> pb.Table:
    part = pb.Table()
    for column in table.columns:
        piece = part.columns.add(name=column.name)
        if column.WhichOneof("values") == "numbers":
            piece.numbers.values.extend(column.numbers.values[start:stop])
        else:
            piece.strings.values.extend(column.strings.values[start:stop])
            piece.strings.missing.extend(row - start for row in column.strings.missing if start <= row < stop)
    return part
