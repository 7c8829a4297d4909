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
import inspect
import io
import math
import pickle
import types
from collections.abc import Iterable
from typing import Any

import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper
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


# The pure-Python unpickler: its opcodes are methods in a table a subclass can replace (the C one's are not).
# Typed as Any: the stubs describe pickle.Unpickler, without the table, the stack or the methods replaced here.
_PythonUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined]


class RestrictedUnpickler(_PythonUnpickler):
    """pickle's own unpickler with the allow-list on every global, guards on every opcode that calls or mutates,
    and joblib's arrays read here (`_expand_array`) so that no unpickler of joblib's ever touches the bytes.

    joblib reads an object-dtype array through a nested unpickler of its own that borrowed the restricted
    `find_class` but not the guards below; a nested stream here is another RestrictedUnpickler sharing this
    one's rules and allocation budget.
    """

    dispatch = _PythonUnpickler.dispatch.copy()

    def __init__(
        self, file_handle: Any, trusted_modules: tuple[str, ...], budget: AllocationBudget, nested: bool = False
    ) -> None:
        super().__init__(file_handle)
        # An object array's elements: plain pickle, which joblib writes with pickle.dump, so a NumpyArrayWrapper
        # there is never joblib's and is refused rather than read from the outer file.
        self.nested = nested
        self.file_handle = file_handle
        self.trusted_modules = tuple(trusted_modules)
        self.budget = budget
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

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it uses persistent ids, which artifacts never do")

    def _mutable_target(self, target: Any, opcode: str) -> Any:
        """`target` if an opcode may change it: never a class, module, function or ufunc, named or reached."""
        if id(target) in self._named or _is_shared_code(target):
            raise pickle.UnpicklingError(
                f"it applies {opcode} to {_describe(target)}, which would change it for the whole process"
            )
        return target

    def load_build(self) -> None:
        self._mutable_target(self.stack[-2], "BUILD")  # below the state BUILD is about to apply
        super().load_build()
        if isinstance(self.stack[-1], NumpyArrayWrapper):
            if self.nested:
                raise pickle.UnpicklingError("its object array holds another joblib array, which joblib never writes")
            self.stack[-1] = self._expand_array(self.stack[-1])

    def load_setitem(self) -> None:
        self._mutable_target(self.stack[-3], "SETITEM")
        super().load_setitem()

    def load_setitems(self) -> None:
        self._mutable_target(self._below_mark(), "SETITEMS")
        super().load_setitems()

    def load_append(self) -> None:
        self._mutable_target(self.stack[-2], "APPEND")
        super().load_append()

    def load_appends(self) -> None:
        self._mutable_target(self._below_mark(), "APPENDS")
        super().load_appends()

    def load_additems(self) -> None:
        self._mutable_target(self._below_mark(), "ADDITEMS")
        super().load_additems()

    def load_reduce(self) -> None:
        self.budget.charge_call(self.stack[-2], self.stack[-1], {})
        super().load_reduce()

    def load_newobj(self) -> None:
        self.budget.charge_call(self.stack[-2], self.stack[-1], {})
        super().load_newobj()

    def load_newobj_ex(self) -> None:
        self.budget.charge_call(self.stack[-3], self.stack[-2], self.stack[-1])
        super().load_newobj_ex()

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ
        self.budget.charge_call(klass, args, {})
        super()._instantiate(klass, args)  # type: ignore[misc]

    def _below_mark(self) -> Any:
        """What a SETITEMS, APPENDS or ADDITEMS changes: the object under the MARK its items follow."""
        if not self.metastack or not self.metastack[-1]:
            raise pickle.UnpicklingError("it changes an object that is not there (a malformed stream)")
        return self.metastack[-1][-1]

    def _expand_array(self, wrapper: NumpyArrayWrapper) -> Any:
        """The array a joblib wrapper stands for, read from the bytes after it, as joblib's read_array does,
        but with its description checked and its size backed by the bytes that remain."""
        dtype, shape, order = _array_description(wrapper)
        if dtype.hasobject:
            inner = RestrictedUnpickler(self.file_handle, self.trusted_modules, self.budget, nested=True)
            array = inner.load()
            if not isinstance(array, np.ndarray):
                raise pickle.UnpicklingError(f"its object array holds a {type(array).__name__}, not an array")
            return array
        _skip_alignment(self.file_handle, wrapper)
        count = math.prod(shape)
        data = self.budget.read_exactly(self.file_handle, count * dtype.itemsize)
        array = np.frombuffer(data, dtype=dtype, count=count).copy()
        array = array.reshape(shape[::-1]).transpose() if order == "F" else array.reshape(shape)
        return _native_byte_order(array)

    for _opcode, _method in (
        (pickle.BUILD, load_build),
        (pickle.SETITEM, load_setitem),
        (pickle.SETITEMS, load_setitems),
        (pickle.APPEND, load_append),
        (pickle.APPENDS, load_appends),
        (pickle.ADDITEMS, load_additems),
        (pickle.REDUCE, load_reduce),
        (pickle.NEWOBJ, load_newobj),
        (pickle.NEWOBJ_EX, load_newobj_ex),
    ):
        dispatch[_opcode[0]] = _method
    del _opcode, _method


class AllocationBudget:
    """What a load may allocate beyond the objects its bytes spell out: no more than the bytes that back it.

    A pickle calls constructors with arguments: `bytes(10**10)`, `range(10**10)` handed to `list`, numpy's
    `_reconstruct(ndarray, (10**10,), ...)` or a sparse matrix's shape would allocate gigabytes from a file of a
    hundred bytes. The sizes a call to a class (or to `_reconstruct`) is given, integers and the product of a
    shape, are charged against the file's size; `bytes` and `bytearray` may not be called with a count at all;
    an array's data must be in the file. Functions (Cython's state helpers, scalars) take checksums and seeds,
    which are not sizes, and are not charged.
    """

    def __init__(self, file_bytes: int) -> None:
        self.file_bytes = file_bytes
        self.remaining = file_bytes

    def charge_call(self, target: Any, args: Any, kwargs: Any) -> None:
        positional = tuple(args) if isinstance(args, tuple | list) else ()
        if target in (bytes, bytearray) and positional and _is_integer(positional[0]):
            raise pickle.UnpicklingError(
                f"it calls {target.__name__}({positional[0]}), an allocation no bytes of the file back"
            )
        if isinstance(target, type):
            named = tuple(kwargs.values()) if isinstance(kwargs, dict) else ()
            self._charge(sum(_size_of(value) for value in (*positional, *named)), _describe(target))
        elif _is_reconstruct(target) and len(positional) >= 2:
            self._charge(_size_of(positional[1]), "numpy's _reconstruct")

    def read_exactly(self, handle: Any, size: int) -> bytes:
        """`size` bytes of array data, refused when the file cannot hold them before anything is allocated."""
        remaining = _bytes_left(handle)
        if remaining is not None and size > remaining:
            raise pickle.UnpicklingError(f"an array claims {size} bytes of data, the file has {remaining} left")
        chunks, wanted = [], size
        while wanted:  # a compressed stream's size is unknown: read what it has, never more than it holds
            chunk = handle.read(min(wanted, _READ_CHUNK))
            if not chunk:
                raise pickle.UnpicklingError(f"an array claims {size} bytes of data, the file ends before")
            chunks.append(chunk)
            wanted -= len(chunk)
        return b"".join(chunks)

    def _charge(self, amount: int, what: str) -> None:
        if amount > self.remaining:
            raise pickle.UnpicklingError(
                f"{what} would allocate {amount} items or bytes, more than the {self.file_bytes}-byte file backs"
            )
        self.remaining -= amount


_READ_CHUNK = 16 * 1024 * 1024
# A shape is a short tuple of integers; a longer tuple or a list is data the file spelled out, already paid for.
_SHAPE_LENGTH = 32


def _is_integer(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _size_of(value: Any) -> int:
    """The count of items or bytes an argument may ask a constructor for."""
    if _is_integer(value):
        return abs(int(value))
    if isinstance(value, range):
        return len(value)
    if isinstance(value, tuple) and 0 < len(value) <= _SHAPE_LENGTH and all(_is_integer(v) for v in value):
        return math.prod(abs(int(v)) for v in value)
    return 0


def _is_reconstruct(target: Any) -> bool:
    return getattr(target, "__name__", None) == "_reconstruct" and (
        getattr(target, "__module__", None) or ""
    ).startswith(("numpy._core", "numpy.core"))


def _bytes_left(handle: Any) -> int | None:
    if isinstance(handle, io.BytesIO):
        return len(handle.getbuffer()) - handle.tell()
    return None


def _is_shared_code(value: Any) -> bool:
    return isinstance(value, type | types.ModuleType | np.ufunc) or inspect.isroutine(value)


def _describe(value: Any) -> str:
    if isinstance(value, type | types.ModuleType) or inspect.isroutine(value) or isinstance(value, np.ufunc):
        if isinstance(value, types.ModuleType):
            return f"module {value.__name__}"
        module = getattr(value, "__module__", None)
        return f"{module}.{value.__name__}" if module else value.__name__
    return f"a {type(value).__name__}"


def _array_description(wrapper: NumpyArrayWrapper) -> tuple[np.dtype[Any], tuple[int, ...], str]:
    state = vars(wrapper)
    dtype, shape, order = state.get("dtype"), state.get("shape"), state.get("order", "C")
    subclass = state.get("subclass", np.ndarray)
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("a joblib array has no valid dtype")
    if not isinstance(shape, tuple) or not all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise pickle.UnpicklingError(f"a joblib array has an invalid shape {shape!r}")
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"a joblib array has an invalid order {order!r}")
    if subclass not in (np.ndarray, np.memmap):
        raise pickle.UnpicklingError(f"a joblib array claims the array class {_describe(subclass)}")
    return dtype, tuple(int(n) for n in shape), order


def _skip_alignment(handle: Any, wrapper: NumpyArrayWrapper) -> None:
    if vars(wrapper).get("numpy_array_alignment_bytes") is None:
        return
    padding = handle.read(1)
    length = int.from_bytes(padding, byteorder="little")
    if length and len(handle.read(length)) != length:
        raise pickle.UnpicklingError("the file ends inside an array's alignment padding")


def _native_byte_order(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if array.dtype.byteorder in ("=", "|") or array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


def load_restricted(data: bytes, trusted_modules: tuple[str, ...] = ()) -> Any:
    """What joblib.load(io.BytesIO(data)) returns, unpickled through the allow-list."""
    with _validate_fileobject_and_memmap(io.BytesIO(data), "") as (handle, _):
        if isinstance(handle, str):
            raise pickle.UnpicklingError("it was written by joblib before 0.10, a format that is not loaded")
        return RestrictedUnpickler(handle, trusted_modules, AllocationBudget(len(data))).load()
