"""The stored form of a runtime: named numpy arrays in an .npz, which loads without unpickling anything."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping

import numpy as np

FORMAT_KEY = "format"
# Class labels the pipeline was fitted on: object arrays (strings as Python objects) cannot be stored
# without pickle, so they are stored as unicode and this flag turns them back into objects on load.
CLASSES_KEY = "classes"
CLASSES_AS_OBJECTS_KEY = "classes_as_objects"


class UnstorableClasses(ValueError):
    """The pipeline's classes_ hold values with no pickle-free stored form (neither all numbers nor all text)."""


def pack(format_name: str, arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{FORMAT_KEY: np.array(format_name)}, **arrays)
    return buffer.getvalue()


def unpack(format_name: str, data: bytes) -> dict[str, np.ndarray]:
    """The arrays `pack` stored; ValueError when the bytes are not a stored runtime of `format_name`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        # zip members carry a CRC-32, so a flipped byte is found here rather than served
        raise ValueError(f"corrupt {format_name} runtime data: {type(exc).__name__}: {exc}") from exc
    found = arrays.pop(FORMAT_KEY, None)
    if found is None or found.shape != () or str(found) != format_name:
        raise ValueError(f"runtime data is not of format {format_name!r} (it says {found!r})")
    return arrays


def require(arrays: Mapping[str, np.ndarray], format_name: str, *keys: str) -> list[np.ndarray]:
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(f"corrupt {format_name} runtime data: missing {', '.join(missing)}")
    return [arrays[key] for key in keys]


def classes_to_arrays(classes: np.ndarray) -> dict[str, np.ndarray]:
    classes = np.asarray(classes)
    if classes.dtype.kind == "O":
        if not all(isinstance(value, str) for value in classes):
            raise UnstorableClasses(f"classes_ of mixed or non-text objects ({classes[:5]!r}...) have no stored form")
        return {CLASSES_KEY: classes.astype(str), CLASSES_AS_OBJECTS_KEY: np.array(True)}
    if classes.dtype.kind not in "biufU":
        raise UnstorableClasses(f"classes_ of dtype {classes.dtype} have no stored form")
    return {CLASSES_KEY: classes, CLASSES_AS_OBJECTS_KEY: np.array(False)}


def classes_from_arrays(arrays: Mapping[str, np.ndarray], format_name: str) -> np.ndarray:
    classes, as_objects = require(arrays, format_name, CLASSES_KEY, CLASSES_AS_OBJECTS_KEY)
    if classes.ndim != 1 or len(classes) < 2:
        raise ValueError(f"corrupt {format_name} runtime data: classes of shape {classes.shape}")
    return classes.astype(object) if bool(as_objects) else classes
