"""How a server option's text (a flag's value or an environment variable) is read and range-checked.

server/config.py declares the options; this module only knows how to turn text into checked values,
so that every option reads and reports a bad value the same way, and how a secret is read from the
environment or from the file a *_FILE variable names.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The longest wait any option may ask for. Python's timers refuse waits beyond threading.TIMEOUT_MAX
# (an OverflowError in a background thread, long after start-up); a week is longer than any sensible value.
MAX_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Kind:
    """How an option's text (a flag's value or an environment variable) becomes a value.

    parse raises ValueError on text it cannot read; `expected` completes "must be ..." in the error.
    """

    expected: str
    parse: Callable[[str], Any]
    metavar: str


@dataclass(frozen=True)
class Within:
    """The values a number may take: low..high, excluding low when low_open, and `off` besides."""

    low: float
    high: float | None = None
    low_open: bool = False
    off: float | None = None

    def allows(self, value: float) -> bool:
        if value == self.off:
            return True
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        low, high = number_text(self.low), None if self.high is None else number_text(self.high)
        if self.low_open:
            text = "positive" if self.low == 0 else f"more than {low}"
            text += "" if high is None else f" and at most {high}"
        else:
            text = (f"{low} or more" if self.low == 0 else f"at least {low}") if high is None else f"in {low}..{high}"
        return text if self.off is None else f"{number_text(self.off)} (off) or {text}"


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _integer(text: str) -> int:
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text


def _path(text: str) -> Path:
    return Path(_text(text))


def _optional_text(text: str) -> str | None:
    return text.strip() or None


def _optional_path(text: str) -> Path | None:
    # As before the table: an empty variable (a common way to "unset" one in compose files) means none.
    return Path(text) if text else None


def _artifact_store(text: str) -> str | None:
    """A directory, or an object store's URL that server/storage/object_store.py can open (StoreUrlError says
    why not, and is a ValueError)."""
    from predserve.server.storage.object_store import store_location

    if not text.strip():
        return None
    store_location(text)
    return text


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(text)
    return word in _TRUE


def _module_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(all(part.isidentifier() for part in name.split(".")) for name in names):
        raise ValueError(text)
    return names


def choice(choices: type[enum.Enum]) -> Kind:
    values = [str(member.value) for member in choices]
    return Kind(f"one of {', '.join(values)}", choices, "|".join(values))


INTEGER = Kind("an integer", _integer, "N")
NUMBER = Kind("a finite number", _finite, "S")
TEXT = Kind("non-empty", _text, "TEXT")
PATH = Kind("a non-empty path", _path, "PATH")
OPTIONAL_TEXT = Kind("any text", _optional_text, "TEXT")
OPTIONAL_PATH = Kind("a path", _optional_path, "PATH")
ARTIFACT_STORE = Kind("a directory or s3://bucket/prefix", _artifact_store, "DIR|URL")
MODULE_NAMES = Kind("comma-separated module names such as mypackage.transformers", _module_names, "MODULE[,MODULE]")
BOOLEAN = Kind(f"one of {', '.join(_TRUE + _FALSE)}", _boolean, "")
POSITIVE = Within(0, low_open=True)
NOT_NEGATIVE = Within(0)
SECONDS = Within(0, MAX_SECONDS)
POSITIVE_SECONDS = Within(0, MAX_SECONDS, low_open=True)


def secret_from_env(env: Mapping[str, str], name: str) -> bytes | None:
    """A secret from env NAME, or from the file env NAME_FILE names; never both. Error texts never hold it."""
    inline, file_name = env.get(name), env.get(f"{name}_FILE")
    if inline is not None and file_name is not None:
        raise ValueError(f"set {name} or {name}_FILE, not both")
    if file_name is not None:
        try:
            value = Path(file_name).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read {name}_FILE {file_name}: {exc.strerror}") from None
    elif inline is not None:
        value = inline.strip().encode()
    else:
        return None
    if not value:
        raise ValueError(f"{name} is set but empty")
    return value


def token_from_env(env: Mapping[str, str], name: str) -> str | None:
    value = secret_from_env(env, name)
    if value is None:
        return None
    # A bearer token travels as a metadata value, which gRPC allows to hold printable ASCII only.
    if not all(0x21 <= byte <= 0x7E for byte in value):
        raise ValueError(f"{name} must be printable ASCII without spaces")
    return value.decode()
