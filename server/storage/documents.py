"""The JSON documents of data_history, rendered a whole batch at a time.

data_history keeps each row as a JSON array of its features and a JSON value for its target, the record since
Phase 4. Rendering them one `json.dumps` per row cost ~8 µs a row, most of an ingest's time; orjson renders
the whole float64 matrix in one call (~1 µs a row) with the shortest representation that reads back as the
same double (`1e-7` where json.dumps writes `1e-07`: every JSON reader gives the same value), and the integer
targets of a classifier are their decimal digits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson


def feature_documents(matrix: np.ndarray) -> list[str]:
    """One JSON array per row of a 2-D float64 matrix of finite values."""
    if matrix.shape[0] == 0:
        return []
    text = orjson.dumps(np.ascontiguousarray(matrix, dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY).decode()
    # "[[1.0,2.0],[3.0,4.0]]": no number's text holds a bracket, so "],[" splits exactly between rows.
    return ["[" + row + "]" for row in text[2:-2].split("],[")]


def target_documents(targets: Sequence[Any]) -> list[str]:
    """One JSON value per target: plain ints (never bools) by their digits, anything else by json.dumps."""
    if all(type(value) is int for value in targets):
        return list(map(str, targets))
    return [json.dumps(value) for value in targets]
