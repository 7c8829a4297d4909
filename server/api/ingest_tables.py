"""The Table of an IngestHistory stream: its rows split over the stream's messages, gathered into whole columns."""

from __future__ import annotations

import numpy as np

from predserve.protos import predserve_pb2 as pb
from predserve.server.errors import InvalidArgument
from predserve.server.services.typed_ingest import TableColumns


class TableParts:
    """The table of a stream's messages, its rows split over them in order: each column decoded as one array,
    numbers by NumPy straight from the repeated field, strings with None at their missing rows."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.kinds: tuple[str, ...] = ()
        self.parts: list[list[np.ndarray]] = []
        self.count = 0

    def add(self, table: pb.Table) -> None:
        names = tuple(column.name for column in table.columns)
        kinds = tuple(column.WhichOneof("values") or "" for column in table.columns)
        if not self.names:
            self.names, self.kinds, self.parts = names, kinds, [[] for _ in names]
        elif (names, kinds) != (self.names, self.kinds):
            raise InvalidArgument("every message of a stream sends the same table columns, of the same types, in order")
        count = None
        for index, column in enumerate(table.columns):
            values = _table_values(index, column)
            if count is not None and len(values) != count:
                raise InvalidArgument(f"column {column.name!r} holds {len(values)} rows, column {names[0]!r} {count}")
            count = len(values)
            self.parts[index].append(values)
        self.count += count or 0

    def columns(self) -> TableColumns:
        joined = tuple(parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in self.parts)
        return TableColumns(self.names, joined)


def _table_values(index: int, column: pb.TableColumn) -> np.ndarray:
    which = column.WhichOneof("values")
    if which == "numbers":
        return np.array(column.numbers.values, dtype=np.float64)
    if which != "strings":
        raise InvalidArgument(f"column {index} ({column.name!r}) of the table holds neither numbers nor strings")
    values = np.empty(len(column.strings.values), dtype=object)
    values[:] = list(column.strings.values)
    missing = np.array(column.strings.missing, dtype=np.int64)
    if len(missing) and missing.max() >= len(values):
        raise InvalidArgument(f"column {column.name!r} marks row {int(missing.max())} missing, of {len(values)} rows")
    values[missing] = None
    return values
