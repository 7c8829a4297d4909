"""Typed segment formats measured (issue 23, item 1): 1M rows of 5 numbers and 3 strings, 5 % missing, cut into
16,384-row segments as data_segments holds them; the time to encode, to decode into the DataFrame that
HistoryRepository.load_table builds, and the bytes.

Run: PYTHONPATH=. .venv/bin/python bench/typed_segments.py
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from predserve.server.domain import Column, ColumnType, Schema
from predserve.server.storage.tables import decode_segment, encode_segment

ROWS = 1_000_000
SEGMENT_ROWS = 16384
NUMBERS, STRINGS = 5, 3

rng = np.random.default_rng(0)
numbers = [rng.normal(size=ROWS) for _ in range(NUMBERS)]
for values in numbers:
    values[rng.random(ROWS) < 0.05] = np.nan
strings = []
for size in (3, 50, 2000):
    vocabulary = np.array([f"v{i}" for i in range(size)], dtype=object)
    texts = vocabulary[rng.integers(0, size, ROWS)].copy()
    texts[rng.random(ROWS) < 0.05] = None
    strings.append(texts)
SCHEMA = Schema(
    tuple(Column(f"n{i}", ColumnType.NUMBER) for i in range(NUMBERS))
    + tuple(Column(f"s{i}", ColumnType.STRING) for i in range(STRINGS))
)
COLUMNS = numbers + strings
SEGMENTS = [(start, min(start + SEGMENT_ROWS, ROWS)) for start in range(0, ROWS, SEGMENT_ROWS)]


def arrow_encode(start: int, stop: int) -> bytes:
    return encode_segment(SCHEMA, [column[start:stop] for column in COLUMNS])


def arrow_decode(blob: bytes) -> list[np.ndarray]:
    return decode_segment(blob, len(COLUMNS))


def parquet_encode(start: int, stop: int) -> bytes:
    kinds = {ColumnType.NUMBER: pa.float64(), ColumnType.STRING: pa.string()}
    table = pa.table(
        {
            c.name: pa.array(values[start:stop], type=kinds[c.type], from_pandas=True)
            for c, values in zip(SCHEMA.columns, COLUMNS, strict=True)
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="none")
    return sink.getvalue()


def parquet_decode(blob: bytes) -> list[np.ndarray]:
    return [column.to_numpy() for column in pq.read_table(io.BytesIO(blob)).columns]


def plain_encode(start: int, stop: int) -> bytes:
    """A hand-made layout: each number column's float64 bytes (NaN where missing), each string column a JSON array."""
    parts = [np.ascontiguousarray(c[start:stop]).tobytes() for c in numbers]
    parts += [orjson.dumps(s[start:stop].tolist()) for s in strings]
    return json.dumps([len(part) for part in parts]).encode() + b"\n" + b"".join(parts)


def plain_decode(blob: bytes) -> list[np.ndarray]:
    head, _, body = blob.partition(b"\n")
    columns, position = [], 0
    for index, size in enumerate(json.loads(head)):
        part = body[position : position + size]
        position += size
        if index < NUMBERS:
            columns.append(np.frombuffer(part, dtype="<f8"))
        else:
            listed = orjson.loads(part)
            texts = np.empty(len(listed), dtype=object)
            texts[:] = listed
            columns.append(texts)
    return columns


def frame(blobs: list[bytes], decode: Callable[[bytes], list[np.ndarray]]) -> pd.DataFrame:
    filled = [np.empty(ROWS, dtype=np.float64 if c.type is ColumnType.NUMBER else object) for c in SCHEMA.columns]
    for (start, stop), blob in zip(SEGMENTS, blobs, strict=True):
        for column, values in zip(filled, decode(blob), strict=True):
            column[start:stop] = values
    return pd.DataFrame(
        {
            c.name: pd.Series(values, dtype=np.float64 if c.type is ColumnType.NUMBER else object, copy=False)
            for c, values in zip(SCHEMA.columns, filled, strict=True)
        },
        copy=False,
    )


def main() -> None:
    formats = [
        ("arrow ipc (chosen)", arrow_encode, arrow_decode),
        ("parquet, uncompressed", parquet_encode, parquet_decode),
        ("float64 + JSON strings", plain_encode, plain_decode),
    ]
    for name, encode, decode in formats:
        began = time.perf_counter()
        blobs = [encode(start, stop) for start, stop in SEGMENTS]
        encoded = time.perf_counter()
        result = frame(blobs, decode)
        decoded = time.perf_counter()
        assert int(result["s2"].isna().sum()) == sum(value is None for value in strings[2])
        print(
            f"{name:24s} encode {encoded - began:5.2f} s   decode to DataFrame {decoded - encoded:5.2f} s "
            f"({ROWS / (decoded - encoded) / 1e6:4.2f} M rows/s)   {sum(map(len, blobs)) / 2**20:6.1f} MiB"
        )


if __name__ == "__main__":
    main()
