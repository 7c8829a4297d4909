"""The bytes of a data_segments row: a batch of observations as Train reads it, and back.

Features are row-major little-endian float64. Targets take the narrowest of four forms that gives back
exactly the values json.loads gives for the batch's JSON rows, so that a dataset trains identically from
either copy (tests/test_training_data.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FEATURE_DTYPE = np.dtype("<f8")

INT64 = "int64"  # every target an int (never a bool) within int64: little-endian int64
NUMBER = "number"  # ints of at most 2**53 and floats: little-endian float64, then one bit per row, set for an int
LABELS = "labels"  # every target a str: little-endian uint32 codes into `labels`, a JSON array
JSON = "json"  # anything else (Phase-4 rows may hold it): the UTF-8 JSON array of the values
NUMERIC_KINDS = frozenset({INT64, NUMBER})

_INT64 = np.dtype("<i8")
_CODES = np.dtype("<u4")
_EXACT_IN_FLOAT = 2**53
_INT64_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class EncodedTargets:
    kind: str
    data: bytes
    labels: str | None = None


def encode_features(matrix: np.ndarray) -> bytes:
    return np.ascontiguousarray(matrix, dtype=FEATURE_DTYPE).tobytes()


def decode_features(data: bytes, width: int) -> np.ndarray:
    """A read-only view of the bytes, shaped (rows, width)."""
    return np.frombuffer(data, dtype=FEATURE_DTYPE).reshape(-1, width)


def encode_targets(values: Sequence[Any]) -> EncodedTargets:
    types = set(map(type, values))
    if types <= {int} and (not values or (min(values) >= _INT64_RANGE[0] and max(values) <= _INT64_RANGE[1])):
        return EncodedTargets(INT64, np.asarray(values, dtype=_INT64).tobytes())
    if types <= {int, float} and all(type(v) is float or abs(v) <= _EXACT_IN_FLOAT for v in values):
        is_int = np.fromiter((type(v) is int for v in values), dtype=bool, count=len(values))
        return EncodedTargets(NUMBER, np.asarray(values, dtype=FEATURE_DTYPE).tobytes() + np.packbits(is_int).tobytes())
    if types <= {str}:
        vocabulary: dict[str, int] = {}
        codes = np.fromiter(
            (vocabulary.setdefault(v, len(vocabulary)) for v in values), dtype=_CODES, count=len(values)
        )
        return EncodedTargets(LABELS, codes.tobytes(), json.dumps(list(vocabulary)))
    return EncodedTargets(JSON, json.dumps(list(values)).encode())


def decode_targets(kind: str, data: bytes, labels: str | None, count: int) -> np.ndarray:
    """The targets of a segment whose kind is numeric or labels: int64, float64, or an object array of str."""
    if kind == INT64:
        return np.frombuffer(data, dtype=_INT64, count=count)
    if kind == NUMBER:
        return np.frombuffer(data, dtype=FEATURE_DTYPE, count=count)
    if kind == LABELS:
        names = json.loads(labels or "[]")
        vocabulary = np.empty(len(names), dtype=object)
        vocabulary[:] = names
        return vocabulary[np.frombuffer(data, dtype=_CODES, count=count)]
    raise ValueError(f"targets of kind {kind!r} decode to values only")


def target_values(kind: str, data: bytes, labels: str | None, count: int) -> list[Any]:
    """The targets as json.loads gave them, one Python value per row."""
    if kind == JSON:
        values: list[Any] = json.loads(data)
        return values
    values = decode_targets(kind, data, labels, count).tolist()
    if kind == NUMBER:
        is_int = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=count * 8), count=count).astype(bool)
        for index in np.flatnonzero(is_int).tolist():
            values[index] = int(values[index])
    return values
