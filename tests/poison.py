"""The outside tester's poisoned artifacts: pickles that try to change scikit-learn, NumPy or SciPy classes for the
whole process, or to allocate far more memory than their bytes, rather than to run code of their own."""

from __future__ import annotations

import io
import pickle

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

# GLOBAL sklearn._loss.link LogitLink; (None, {'inverse': numpy.negative}); BUILD; POP: every binary
# HistGradientBoosting in the process would answer -raw instead of expit(raw).
_NAME_LOGIT_LINK = b"csklearn._loss.link\nLogitLink\n"
_SET_INVERSE = b"N}X\x07\x00\x00\x00inversecnumpy\nnegative\ns\x86b0"
POISON_OPS = _NAME_LOGIT_LINK + _SET_INVERSE
# The same class reached from the memo rather than right after GLOBAL names it.
POISON_FROM_MEMO_OPS = _NAME_LOGIT_LINK + b"q\x070h\x07" + _SET_INVERSE
# State set on a ufunc, and an entry set on a class through SETITEMS.
POISON_UFUNC_OPS = b"cnumpy\nnegative\n}X\x01\x00\x00\x00xK\x01sb0"
POISON_SETITEMS_OPS = _NAME_LOGIT_LINK + b"(X\x07\x00\x00\x00inversecnumpy\nnegative\nu0"


def string_label_classifier() -> LogisticRegression:
    """A real classifier whose classes_ is an object array: joblib writes it as a nested pickle stream."""
    iris = load_iris()
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)[iris.target]
    return LogisticRegression(max_iter=500).fit(iris.data, labels)


def dumped(value: object) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue()


def poisoned_inside_an_object_array(ops: bytes = POISON_OPS) -> bytes:
    """The tester's artifact: a real pipeline whose object array's nested stream runs `ops` before the array."""
    model = string_label_classifier()
    data = dumped(model)
    nested = pickle.dumps(model.classes_, protocol=5)  # as joblib writes it
    assert data.count(nested) == 1, "the object array's nested stream was not found where joblib writes it"
    return data.replace(nested, nested[:2] + ops + nested[2:])


def poisoned_outer_stream(ops: bytes = POISON_OPS) -> bytes:
    """The same operations in the artifact's own stream, before a real pipeline."""
    data = dumped(string_label_classifier())
    assert data[:2] == b"\x80\x04" or data[:1] == b"\x80"
    return data[:2] + ops + data[2:]


def allocates(call: bytes) -> bytes:
    """A tiny pickle whose one call would allocate gigabytes."""
    return b"\x80\x02" + call + b"."


HUGE = 1 << 34  # 16 GiB
_HUGE_INT = b"\x8a\x05" + HUGE.to_bytes(5, "little")  # LONG1
BYTES_OF_A_COUNT = allocates(b"c__builtin__\nbytes\n" + _HUGE_INT + b"\x85R")
BYTEARRAY_OF_A_COUNT = allocates(b"c__builtin__\nbytearray\n" + _HUGE_INT + b"\x85R")
LIST_OF_A_RANGE = allocates(b"c__builtin__\nlist\nc__builtin__\nxrange\nK\x00" + _HUGE_INT + b"\x86R\x85R")
RECONSTRUCTED_ARRAY = allocates(
    b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _HUGE_INT + b"\x85C\x01b\x87R"
)


def array_claiming_more_than_the_file() -> bytes:
    """A joblib array whose wrapper says 2**31 float64 values follow, and 8 bytes do (protocol 2: no frames
    whose lengths the longer shape would break)."""
    buffer = io.BytesIO()
    joblib.dump(np.zeros(1), buffer, protocol=2)
    shape_of_one = b"K\x01\x85"  # BININT1 1, TUPLE1
    assert buffer.getvalue().count(shape_of_one) == 1
    return buffer.getvalue().replace(shape_of_one, b"\x8a\x05" + (1 << 31).to_bytes(5, "little") + b"\x85")
