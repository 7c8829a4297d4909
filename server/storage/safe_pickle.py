"""Unpickling joblib files through an allow-list, so that loading an artifact never calls foreign code.

A pickle names globals (module + name) and calls them: `__reduce__` may name `os.system`, `exec` or
`subprocess.Popen`. Here every global a file names must pass `allowed_global`, or loading stops with
ForbiddenGlobal before anything it named is called. The rule:

- a few exact builtins that only build plain data (`set`, `frozenset`, `slice`, `complex`, `range`,
  `bytes`, `bytearray`, `object`, ...), `collections.OrderedDict`/`defaultdict`/`deque`,
  `copyreg._reconstructor` and `_codecs.encode` (older pickle protocols), and joblib's
  `NumpyArrayWrapper` (how joblib stores an array);
- from numpy, scipy and sklearn (and from the modules an operator names with `--trusted-module`), only
  classes defined in those packages, NumPy ufuncs, and a short list of known pickle helpers (numpy's
  array and scalar reconstructors, its random generator constructors, Cython's `__pyx_unpickle_*`).
  Plain functions are refused: a pickle calls what it names, and those packages hold functions that
  read files, unpickle or run processes (`numpy.load`, `numpy._core._ufunc_reconstruct`, ...);
- never a dotted name (pickle would walk attributes to reach `numpy.os.system`), nor an object whose
  own `__module__` lies outside the allowed packages (a re-export such as a module's `Popen`), nor a
  name or module of DENIED_NAMES / DENIED_MODULES (file-opening classes such as `numpy.memmap`,
  test and build tooling, scipy's process-pool helpers), even inside an allowed package;
- BUILD (setting state) is refused on any global the file named, so a pickle cannot rewrite a class.

Import-time code of allowed packages runs (they are installed software), and so do the `__setstate__`
methods of the classes allowed; a trusted module's code runs too, which is what trusting it means.
joblib's own `load` hard-wires its unpickler, so `load_restricted` repeats its few lines
(decompression, then unpickling) with a subclass; nothing is patched process-wide, so threads may
load concurrently. Files from joblib before 0.10 (another format, read with an unrestricted unpickler)
are refused.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import types
from collections.abc import Iterable
from typing import Any

import numpy as np
from joblib.numpy_pickle import NumpyUnpickler
from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap

TRUST_HINT = "add its module with --trusted-module if you trust it"

ALLOWED_PACKAGES = ("sklearn", "numpy", "scipy")

_DATA_BUILTINS = "bool bytearray bytes complex dict float frozenset int list object range set slice str tuple"
EXACT_GLOBALS = frozenset(
    {
        *(("builtins", name) for name in _DATA_BUILTINS.split()),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "encode"),
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    }
)

# Functions (not classes) inside the allowed packages that pickles of arrays, scalars and random
# generators name; each only rebuilds data from its arguments.
HELPER_FUNCTIONS = frozenset(
    {
        *(
            (module, name)
            for module in ("numpy._core.multiarray", "numpy.core.multiarray")
            for name in ("_reconstruct", "scalar")
        ),
        *((module, "_frombuffer") for module in ("numpy._core.numeric", "numpy.core.numeric")),
        *(
            ("numpy.random._pickle", name)
            for name in ("__generator_ctor", "__bit_generator_ctor", "__randomstate_ctor")
        ),
    }
)
CYTHON_UNPICKLE_PREFIX = "__pyx_unpickle_"

# Refused even inside an allowed package: names that evaluate, import, open or run something.
DENIED_NAMES = frozenset(
    """eval exec compile __import__ getattr setattr delattr open system popen Popen load loads fromfile
    memmap NpzFile DataSource MapWrapper _ufunc_reconstruct netcdf_file FortranFile Pool Thread Process""".split()
)
DENIED_MODULES = tuple(
    """numpy.testing numpy.f2py numpy.distutils numpy.ctypeslib numpy.lib._datasource numpy.lib.npyio
    numpy.lib._npyio_impl numpy.lib.format numpy._core.memmap numpy.core.memmap numpy._pytesttester
    scipy.io scipy._lib sklearn.utils._testing sklearn.datasets""".split()
)


class ForbiddenGlobal(pickle.UnpicklingError):
    """The file names a global outside the allow-list; nothing it named was called."""

    def __init__(self, module: str, name: str, why: str = "") -> None:
        self.global_name = f"{module}.{name}"
        super().__init__(f"it names {self.global_name}, {why or 'which is not on the allow-list (' + TRUST_HINT + ')'}")


def _under(module: str, packages: Iterable[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def check_global(module: str, name: str, trusted_modules: tuple[str, ...] = ()) -> None:
    """Raises ForbiddenGlobal unless `module.name` may be named by an artifact (see the module docstring)."""
    if (module, name) in EXACT_GLOBALS:
        return
    packages = ALLOWED_PACKAGES + tuple(trusted_modules)
    if not name.isidentifier() or not _under(module, packages):
        raise ForbiddenGlobal(module, name)
    if name in DENIED_NAMES or _under(module, DENIED_MODULES):
        raise ForbiddenGlobal(module, name, "which loading never allows, even in an allowed package")


def _check_resolved(module: str, name: str, value: Any, trusted_modules: tuple[str, ...]) -> None:
    packages = ALLOWED_PACKAGES + tuple(trusted_modules)
    defined_in = getattr(value, "__module__", None)
    if (module, name) in EXACT_GLOBALS or (module, name) in HELPER_FUNCTIONS:
        return
    if isinstance(value, np.ufunc):
        return
    if not isinstance(defined_in, str) or not _under(defined_in, packages) or _under(defined_in, DENIED_MODULES):
        raise ForbiddenGlobal(module, name, f"which is defined in {defined_in or 'an unknown module'}")
    if isinstance(value, type):
        return
    if name.startswith(CYTHON_UNPICKLE_PREFIX) and callable(value):
        return
    if _under(defined_in, trusted_modules) and isinstance(value, types.FunctionType):
        return  # the operator trusts this module's functions, e.g. the callable of a FunctionTransformer
    raise ForbiddenGlobal(module, name, "which is a function, not a class")


class RestrictedUnpickler(NumpyUnpickler):
    """joblib's unpickler, asking check_global before it resolves any global."""

    dispatch = NumpyUnpickler.dispatch.copy()

    def __init__(self, file_handle: Any, trusted_modules: tuple[str, ...] = ()) -> None:
        super().__init__("", file_handle, ensure_native_byte_order=True)
        self.trusted_modules = tuple(trusted_modules)
        self._named: set[int] = set()

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle itself maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        check_global(module, name, self.trusted_modules)
        value = super().find_class(module, name)
        _check_resolved(module, name, value, self.trusted_modules)
        self._named.add(id(value))
        return value

    def load_build(self) -> None:
        target = self.stack[-2]  # below the state BUILD is about to apply
        if id(target) in self._named:
            kind = target.__name__ if hasattr(target, "__name__") else type(target).__name__
            raise pickle.UnpicklingError(f"it sets the state of {kind}, a global it named, which is never allowed")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def load_restricted(data: bytes, trusted_modules: tuple[str, ...] = ()) -> Any:
    """What joblib.load(io.BytesIO(data)) returns, unpickled through the allow-list."""
    with _validate_fileobject_and_memmap(io.BytesIO(data), "") as (handle, _):
        if isinstance(handle, str):
            raise pickle.UnpicklingError("it was written by joblib before 0.10, a format that is not loaded")
        return RestrictedUnpickler(handle, trusted_modules).load()
