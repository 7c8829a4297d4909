"""Rows grouped into the batches IngestHistory stores one at a time, and the messages that carry each batch.

A batch whose rows all have the same number of features and whose targets are all integers, all numbers or
all labels travels as columns: the features as one buffer of little-endian float64 (the standard library's
`array`, no NumPy), the targets as one more. Any other batch travels as Row messages, as earlier clients sent
it, so that the server judges it exactly as before. Either way a batch is split over messages of about
MESSAGE_BYTES, far below the server's message limit, and stored all or nothing.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from predserve.protos import predserve_pb2 as pb

TargetValue = str | int | float
RowTuple = tuple[Sequence[float], TargetValue]
T = TypeVar("T")

# The server's default --max-rows-per-request: one batch is one IngestHistory stream of at most this many rows.
BATCH_ROWS = 100_000
MESSAGE_BYTES = 1 << 20
_INT64 = (-(2**63), 2**63 - 1)
_EXACT_IN_FLOAT = 2**53


def _little_endian(values: array) -> bytes:
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


@dataclass(frozen=True)
class TargetColumn:
    """The targets of a batch of columns: exactly one of integers, numbers (with integer_rows marking the
    integers among them) or labels."""

    integers: array | None = None
    numbers: array | None = None
    integer_rows: bytes = b""
    labels: Sequence[str] | None = None

    @classmethod
    def of(cls, values: Sequence[Any]) -> TargetColumn | None:
        """The column of these targets, or None when only Row messages say them as they are (bools, None,
        NumPy scalars, labels mixed with numbers, integers beyond float64 or int64)."""
        types = set(map(type, values))
        if types == {int}:
            if min(values) < _INT64[0] or max(values) > _INT64[1]:
                return None
            return cls(integers=array("q", values))
        if types == {float}:
            return cls(numbers=array("d", values))
        if types == {int, float}:
            if any(type(v) is int and abs(v) > _EXACT_IN_FLOAT for v in values):
                return None
            return cls(numbers=array("d", values), integer_rows=bytes(type(v) is int for v in values))
        if types == {str}:
            return cls(labels=list(values))
        return None

    def fill(self, message: pb.ColumnBatch, start: int, stop: int) -> None:
        if self.integers is not None:
            message.integer_targets = _little_endian(self.integers[start:stop])
        elif self.numbers is not None:
            message.number_targets = _little_endian(self.numbers[start:stop])
            message.integer_rows = self.integer_rows[start:stop]
        elif self.labels is not None:
            message.label_targets.values.extend(self.labels[start:stop])


@dataclass(frozen=True)
class Batch:
    """Rows of one batch: as columns (`features` row-major float64, `targets`), or as Row messages."""

    row_count: int
    feature_count: int = 0
    features: array | None = None
    targets: TargetColumn | None = None
    rows: Sequence[pb.Row] = ()

    @classmethod
    def of_rows(cls, rows: Sequence[RowTuple]) -> Batch:
        """Columns when the rows allow them, else Row messages."""
        width = len(rows[0][0]) if rows else 0
        targets = TargetColumn.of([target for _, target in rows])
        if targets is not None and width and all(len(features) == width for features, _ in rows):
            try:
                features = array("d", itertools.chain.from_iterable(features for features, _ in rows))
            except TypeError:
                pass  # not all numbers: Row messages say what is wrong with which one
            else:
                return cls(len(rows), width, features, targets)
        return cls.as_row_messages(rows)

    @classmethod
    def of_columns(cls, width: int, features: array, targets: Sequence[Any]) -> Batch:
        count = len(targets)
        column = TargetColumn.of(targets)
        if column is None:
            return cls.as_row_messages([(features[i * width : (i + 1) * width], targets[i]) for i in range(count)])
        return cls(count, width, features, column)

    @classmethod
    def as_row_messages(cls, rows: Sequence[RowTuple]) -> Batch:
        return cls(len(rows), rows=[pb.Row(features=f, target=target_message(t)) for f, t in rows])

    def messages(self, header: pb.IngestHistoryRequest) -> list[pb.IngestHistoryRequest]:
        """The batch as a stream: `header` (dataset, names, ingest and batch) first, with the first rows."""
        if self.features is None or self.targets is None:
            width = len(self.rows[0].features) if self.rows else 0
            step = max(1, MESSAGE_BYTES // (8 * width + 16))
            parts = [list(self.rows[i : i + step]) for i in range(0, len(self.rows), step)] or [[]]
            messages = [pb.IngestHistoryRequest(rows=part) for part in parts]
        else:
            step = max(1, MESSAGE_BYTES // (8 * self.feature_count))
            messages = []
            for start in range(0, self.row_count, step):
                stop = min(start + step, self.row_count)
                message = pb.IngestHistoryRequest()
                columns = message.columns
                columns.feature_count = self.feature_count
                columns.features = _little_endian(self.features[start * self.feature_count : stop * self.feature_count])
                self.targets.fill(columns, start, stop)
                messages.append(message)
        messages[0].MergeFrom(header)
        return messages


def target_message(value: TargetValue) -> pb.Target:
    if isinstance(value, str):
        return pb.Target(label=value)
    if isinstance(value, int) and not isinstance(value, bool):
        return pb.Target(integer=value)
    return pb.Target(number=float(value))


@runtime_checkable
class BatchSource(Protocol):
    """Rows that can be read as batches from any row on: what `ingest` sends (rows, a CSV file)."""

    def batches(self, batch_rows: int, start_row: int = 0) -> Iterator[Batch]: ...


class RowIterable:
    """(features, target) rows from any iterable: a resumed ingest passes over the rows already stored."""

    def __init__(self, rows: Iterable[RowTuple]) -> None:
        self.rows = rows

    def batches(self, batch_rows: int, start_row: int = 0) -> Iterator[Batch]:
        rows = iter(self.rows)
        for _ in itertools.islice(rows, start_row):
            pass
        while chunk := list(itertools.islice(rows, batch_rows)):
            yield Batch.of_rows(chunk)


class Prefetch(Iterator[T]):
    """Runs an iterator one item ahead in a thread of its own, so that the next batch is read and encoded while
    the server stores this one. Its errors come out of `next` in order; `close` stops the thread."""

    _END = object()

    def __init__(self, items: Iterator[T], depth: int = 1) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="predserve-ingest-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put((False, exc))
            return
        self._put((True, self._END))

    def _put(self, entry: tuple[bool, Any]) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        ok, item = self._queue.get()
        if not ok or item is self._END:
            self._done = True
        if not ok:
            raise item
        if item is self._END:
            raise StopIteration
        result: T = item
        return result

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()
        close = getattr(self._items, "close", None)
        if close is not None:
            close()  # a generator's own clean-up (its open file) runs now, not when it is collected
