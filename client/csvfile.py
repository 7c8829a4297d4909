"""A CSV file with a header row and a target column, read as the batches IngestHistory stores.

Numbers are parsed a block of lines at a time: the block's text split once, the target column sliced out,
and `float` mapped over the rest into a float64 `array`, all loops of the standard library's C code rather
than a Python statement per value. A block that does not split evenly (a blank line, a short row, a cell that
is not a number) is read again by `csv.reader`, which finds the line at fault; a file with quotes after its
header is read by `csv.reader` throughout, since a quoted cell may hold a comma or a line break.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from predserve.client.batches import Batch, TargetValue

# Lines parsed per block: bounds the text and the cells held at once to a few MiB.
BLOCK_LINES = 8192
_EXACT_IN_FLOAT = 2**53


class CsvFormatError(ValueError):
    """The file cannot be read as rows: its message names the file, and the line where it can."""


@dataclass(frozen=True)
class CsvScan:
    """One pass over the bytes: their SHA-256, the number of data rows (lines after the header, an estimate
    when there are blank lines or quoted line breaks), and whether any cell after the header is quoted."""

    sha256: str
    rows: int
    quoted: bool


class CsvFile:
    """A BatchSource; `ingest` reads its next batch in a thread while the server stores the last one."""

    prefetch = True

    def __init__(self, path: Path | str, target_column: str) -> None:
        self.path = Path(path)
        with open(self.path, newline="") as handle:
            header = next(csv.reader(handle), None)
        if header is None:
            raise CsvFormatError(f"{self.path} is empty")
        if target_column not in header:
            raise CsvFormatError(f"{self.path} has no column {target_column!r}; columns: {', '.join(header)}")
        self.target_column = target_column
        self.columns = len(header)
        self.target_index = header.index(target_column)
        self.feature_names = [name for i, name in enumerate(header) if i != self.target_index]
        self._scan: CsvScan | None = None

    def scan(self) -> CsvScan:
        if self._scan is None:
            digest = hashlib.sha256()
            lines, quoted, last = 0, False, b""
            with open(self.path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
                    body = chunk if lines else chunk.partition(b"\n")[2]
                    lines += chunk.count(b"\n")
                    quoted = quoted or b'"' in body
                    last = chunk[-1:]
            if last not in (b"", b"\n"):
                lines += 1
            self._scan = CsvScan(digest.hexdigest(), max(0, lines - 1), quoted)
        return self._scan

    def ingest_id(self, dataset: str) -> str:
        """The same for the same dataset, target column and bytes, wherever the file lies and whatever its
        name: running the same ingest again resumes it, and an edited file is a new ingest."""
        key = hashlib.sha256(f"{dataset}\0{self.target_column}\0{self.scan().sha256}".encode()).hexdigest()
        return f"{dataset}:{key[:32]}"

    def batches(self, batch_rows: int, start_row: int = 0) -> Iterator[Batch]:
        """Batches of at most `batch_rows` rows, from the `start_row`-th row (blank lines are no rows)."""
        quoted = self.scan().quoted
        with open(self.path, newline="") as handle:
            reader = csv.reader(handle)
            next(reader)  # the header, however many lines its quotes span
            if quoted or self.columns < 2:
                yield from self._record_batches(reader, batch_rows, start_row)
            else:
                yield from self._line_batches(handle, reader.line_num + 1, batch_rows, start_row)

    def _line_batches(self, handle: IO[str], line_number: int, batch_rows: int, start_row: int) -> Iterator[Batch]:
        skipped = 0
        while skipped < start_row:
            lines = list(itertools.islice(handle, min(BLOCK_LINES, start_row - skipped)))
            if not lines:
                return
            skipped += sum(1 for line in lines if line.strip("\r\n"))
            line_number += len(lines)
        while True:
            features, targets = array("d"), list[TargetValue]()
            while len(targets) < batch_rows:
                lines = list(itertools.islice(handle, min(BLOCK_LINES, batch_rows - len(targets))))
                if not lines:
                    break
                self._parse_block(lines, line_number, features, targets)
                line_number += len(lines)
            if not targets:
                return
            yield Batch.of_columns(self.columns - 1, features, targets)

    def _parse_block(self, lines: list[str], line_number: int, features: array, targets: list[TargetValue]) -> None:
        separators = self.columns - 1
        if all(line.count(",") == separators for line in lines):
            text = "".join(lines).replace("\r\n", "\n").replace("\n", ",")
            cells = text.split(",")
            if text.endswith(","):
                cells.pop()
            target_cells = cells[self.target_index :: self.columns]
            del cells[self.target_index :: self.columns]
            try:
                values = array("d", map(float, cells))
            except ValueError:
                pass  # csv.reader below names the line
            else:
                features.extend(values)
                targets.extend(_targets(target_cells))
                return
        self._parse_records(enumerate(csv.reader(lines), start=line_number), features, targets)

    def _record_batches(self, reader: Any, batch_rows: int, start_row: int) -> Iterator[Batch]:
        """csv.reader's records, for files with quotes: each named by the line it ends on."""
        records = ((reader.line_num, record) for record in reader if record)
        for _ in itertools.islice(records, start_row):
            pass
        while block := list(itertools.islice(records, batch_rows)):
            features, targets = array("d"), list[TargetValue]()
            self._parse_records(block, features, targets)
            yield Batch.of_columns(self.columns - 1, features, targets)

    def _parse_records(
        self, records: Iterable[tuple[int, list[str]]], features: array, targets: list[TargetValue]
    ) -> None:
        for line_number, record in records:
            if not record:
                continue
            if len(record) != self.columns:
                raise CsvFormatError(f"{self.path}:{line_number}: {len(record)} fields, the header has {self.columns}")
            try:
                features.extend([float(cell) for i, cell in enumerate(record) if i != self.target_index])
            except ValueError:
                raise CsvFormatError(f"{self.path}:{line_number}: a feature is not a number") from None
            targets.append(csv_target(record[self.target_index]))


def _targets(cells: list[str]) -> list[TargetValue]:
    """csv_target of every cell; integers (the usual class labels) by one `map(int, ...)`."""
    try:
        values: list[TargetValue] = list(map(int, cells))
    except ValueError:
        return [csv_target(cell) for cell in cells]
    if values and (max(values) > _EXACT_IN_FLOAT or min(values) < -_EXACT_IN_FLOAT):  # type: ignore[operator]
        return [csv_target(cell) for cell in cells]
    return values


def csv_target(text: str) -> TargetValue:
    """A target cell: an integer when it is one and has no decimal point, else a number, else a label."""
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number


# Rows of a sample CSV read to tell a column's type (`predserve import --sample-csv`).
SAMPLE_ROWS = 1000
_BOOLEANS = frozenset({"true", "false"})


def sample_column_types(path: Path | str, target_column: str = "", rows: int = SAMPLE_ROWS) -> dict[str, str]:
    """Each column's type from a CSV's header and first rows: "number" when every non-empty cell reads as a
    number (booleans count as numbers, as ingest reads them), else "string". An empty cell is a missing value
    and decides nothing; a column with no value in these rows is left out, and so is `target_column`."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise CsvFormatError(f"{path} is empty")
        if target_column and target_column not in header:
            raise CsvFormatError(f"{path} has no column {target_column!r}; columns: {', '.join(header)}")
        seen: list[str | None] = [None] * len(header)
        for record in itertools.islice(reader, rows):
            for index, cell in enumerate(record[: len(header)]):
                if cell.strip() and seen[index] != "string":
                    seen[index] = "number" if _reads_as_number(cell) else "string"
    return {name: kind for name, kind in zip(header, seen, strict=True) if kind and name != target_column}


def _reads_as_number(cell: str) -> bool:
    if cell.strip().lower() in _BOOLEANS:
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True
