"""Checks on caller input shared by the services: names and feature matrices."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from predserve.server.errors import InvalidArgument, ResourceExhausted

# Names become parts of file names and log lines: letters, digits, '_' and '-' only.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Feature names (a CSV file's column names) are any printable text, spaces and non-ASCII letters included.
MAX_FEATURE_NAME_CHARS = 200


def check_name(what: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is required")
    if not NAME_PATTERN.match(value):
        raise InvalidArgument(
            f"{what} {_shown(value)} is not a valid name: "
            "use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return value


def _shown(name: str, limit: int = 64) -> str:
    """A name as an error message quotes it: escaped as repr does (a newline shows as \\n, ESC as \\x1b), and a
    long one cut short."""
    return repr(name) if len(name) <= limit else f"{name[:40]!r}... ({len(name)} characters)"


def check_feature_name(what: str, name: str) -> None:
    """Printable text, bounded: a name goes into answers, logs and terminals, where a newline forges a line
    and an escape sequence takes over the screen. The refusal shows the name escaped, as repr does."""
    if len(name) > MAX_FEATURE_NAME_CHARS:
        raise InvalidArgument(
            f"{what} {_shown(name, 0)} is too long: feature names are at most {MAX_FEATURE_NAME_CHARS} characters "
            "of printable text"
        )
    if name.isprintable():  # the whole name at once: a Predict by name checks each column's
        return
    unprintable = next((character for character in name if not character.isprintable()), None)
    if unprintable is not None:
        raise InvalidArgument(
            f"{what} {name!r} holds the control or non-printable character {unprintable!r}: feature names are "
            f"at most {MAX_FEATURE_NAME_CHARS} characters of printable text"
        )


def feature_matrix(rows: Sequence[Sequence[float]], expected_features: int | None = None) -> np.ndarray:
    """Rows as a float64 matrix, refusing empty input, ragged rows and non-finite values."""
    if len(rows) == 0:
        raise InvalidArgument("no rows given")
    width = len(rows[0]) if expected_features is None else expected_features
    if width == 0:
        raise InvalidArgument("row 0 has no features")
    for index, row in enumerate(rows):
        if len(row) != width:
            raise InvalidArgument(f"row {index} has {len(row)} features, expected {width}")
    matrix = np.asarray(rows, dtype=np.float64)
    check_finite(matrix)
    return matrix


def check_finite(matrix: np.ndarray) -> None:
    if not np.isfinite(matrix).all():
        bad_row = int(np.argwhere(~np.isfinite(matrix))[0][0])
        raise InvalidArgument(f"row {bad_row} holds a non-finite value (NaN or infinity)")


def check_targets(targets: Sequence[object]) -> None:
    """Targets are a label or a finite number, never missing."""
    if set(map(type, targets)) <= {int}:  # a classifier's labels: nothing to check, and no loop in Python
        return
    for index, value in enumerate(targets):
        if value is None or value == "":
            raise InvalidArgument(f"row {index} has no target")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"row {index} has a non-finite target")


def check_row_limit(what: str, count: int, limit: int | None) -> None:
    """Refuses a request with more rows than the server allows in one call."""
    if limit is not None and count > limit:
        raise ResourceExhausted(
            f"{what} has {count} rows, more than the limit of {limit} rows per request (--max-rows-per-request)"
        )


def check_feature_names(names: Sequence[str], whose: str = "") -> None:
    """Names say which column is which (V2 metadata, imports by name): each one present, printable text of at most
    MAX_FEATURE_NAME_CHARS, and unique. `whose` says where they come from when not from the caller."""
    for index, name in enumerate(names):
        check_feature_name(f"{whose}feature name {index}", name)
        if not name.strip():
            raise InvalidArgument(f"{whose}feature name {index} is empty")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise InvalidArgument(f"feature names must be unique: {', '.join(map(repr, repeated))} repeated")
