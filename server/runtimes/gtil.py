"""One treelite GTIL prediction with what treelite.gtil.predict redoes on every call done once.

treelite.gtil.predict builds and parses a JSON configuration, asks the model its input and output types and
the output's shape, each a ctypes call, before the one call that walks the trees: for one row that was half of
its ~40 µs, and more in a server whose caches the gRPC machinery has cooled between calls. GtilCall makes the
configuration once per model, knows the output's shape per row, and makes the walking call alone. It uses
treelite's C API as treelite.gtil does (pinned to treelite 4.x in pyproject.toml); where that API is not
found, every call goes through treelite.gtil.predict, which gives the same numbers (tests/test_runtimes.py).
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np
import treelite
import treelite.gtil

logger = logging.getLogger(__name__)

try:
    from treelite.core import _LIB, _check_call
    from treelite.gtil.gtil import GTILConfig
    from treelite.util import c_str, typestr_to_ctypes_type, typestr_to_numpy_type
except ImportError:  # another treelite layout: the public function, at its cost
    _LIB = None


class GtilCall:
    """Predictions of one model with one thread, raw margins or treelite's default output."""

    def __init__(self, model: treelite.Model, raw_margin: bool) -> None:
        self._model = model
        self._raw_margin = raw_margin
        self._direct: _Direct | None = None
        if _LIB is not None:
            try:
                self._direct = _Direct(model, raw_margin)
            except (AttributeError, TypeError, treelite.TreeliteError) as exc:
                logger.info("treelite's C API is not as expected (%s): predicting through treelite.gtil", exc)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self._direct is not None:
            return self._direct(rows)
        return treelite.gtil.predict(self._model, rows, nthread=1, pred_margin=self._raw_margin)


class _Direct:
    def __init__(self, model: treelite.Model, raw_margin: bool) -> None:
        self._model = model
        # Kept for the model's life: it owns the parsed configuration handle the C calls use. One thread, even for
        # a proof's hundreds of rows: once OpenMP's pool exists its idle threads cost every later one-row call
        # ~130 µs of CPU (measured), and the server's own threads are its parallelism.
        self._config = GTILConfig(nthread=1, predict_type="raw" if raw_margin else "default")
        input_type, output_type = model.input_type, model.output_type
        self._input_dtype = typestr_to_numpy_type(input_type)
        self._output_dtype = typestr_to_numpy_type(output_type)
        self._input_pointer = ctypes.POINTER(typestr_to_ctypes_type(input_type))
        self._output_pointer = ctypes.POINTER(typestr_to_ctypes_type(output_type))
        self._input_name = c_str(input_type)
        self._row_shape = self._output_shape_per_row()

    def _output_shape_per_row(self) -> tuple[int, ...]:
        shape = ctypes.POINTER(ctypes.c_uint64)()
        ndim = ctypes.c_uint64()
        _check_call(
            _LIB.TreeliteGTILGetOutputShape(
                self._model.handle, ctypes.c_uint64(1), self._config.handle, ctypes.byref(shape), ctypes.byref(ndim)
            )
        )
        dims: list[Any] = np.ctypeslib.as_array(shape, shape=(ndim.value,)).tolist()
        return tuple(int(dim) for dim in dims[1:])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        data = np.ascontiguousarray(rows, dtype=self._input_dtype)
        out = np.zeros((data.shape[0], *self._row_shape), dtype=self._output_dtype)
        _check_call(
            _LIB.TreeliteGTILPredict(
                self._model.handle,
                data.ctypes.data_as(self._input_pointer),
                self._input_name,
                ctypes.c_uint64(data.shape[0]),
                out.ctypes.data_as(self._output_pointer),
                self._config.handle,
            )
        )
        return out
