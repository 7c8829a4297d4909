"""Loading an artifact changes nothing but the object it builds: the outside tester's poisoned pickles (state set
on a scikit-learn class from an object array's nested stream, and variants) are refused, and after them no attribute
of any class of scikit-learn, NumPy or SciPy differs; pickles that would allocate what their bytes do not back are
refused before they allocate."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from typing import Any

import pytest

from predserve.server.storage.safe_pickle import load_restricted
from tests import poison

Snapshot = dict[type, dict[str, int]]


def classes_of(packages: tuple[str, ...]) -> Snapshot:
    """Every class reachable from the loaded modules of `packages`, with the identity of each attribute."""
    snapshot: Snapshot = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(packages):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and value not in snapshot:
                snapshot[value] = {key: id(attribute) for key, attribute in vars(value).items()}
    return snapshot


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    return [
        f"{cls.__module__}.{cls.__qualname__}: {sorted(set(before[cls].items()) ^ set(attributes.items()))}"
        for cls, attributes in after.items()
        if cls in before and before[cls] != attributes
    ]


POISONED: dict[str, Callable[[], bytes]] = {
    "object_array_nested_stream": poison.poisoned_inside_an_object_array,
    "outer_stream": poison.poisoned_outer_stream,
    "nested_from_memo": lambda: poison.poisoned_inside_an_object_array(poison.POISON_FROM_MEMO_OPS),
    "outer_from_memo": lambda: poison.poisoned_outer_stream(poison.POISON_FROM_MEMO_OPS),
    "nested_state_on_a_ufunc": lambda: poison.poisoned_inside_an_object_array(poison.POISON_UFUNC_OPS),
    "nested_setitems_on_a_class": lambda: poison.poisoned_inside_an_object_array(poison.POISON_SETITEMS_OPS),
    "outer_setitems_on_a_class": lambda: poison.poisoned_outer_stream(poison.POISON_SETITEMS_OPS),
}


@pytest.mark.parametrize("case", list(POISONED))
def test_a_poisoned_artifact_is_refused_and_no_class_changes(case: str) -> None:
    data = POISONED[case]()
    load_restricted(poison.dumped(poison.string_label_classifier()))  # every module a load imports, imported
    before = classes_of(("sklearn", "numpy", "scipy"))
    assert len(before) > 1000
    with pytest.raises(pickle.UnpicklingError, match="which would change it for the whole process"):
        load_restricted(data)
    assert changed(before, classes_of(("sklearn", "numpy", "scipy"))) == []


def test_the_unpoisoned_artifact_loads_through_its_nested_stream() -> None:
    model = poison.string_label_classifier()
    loaded: Any = load_restricted(poison.dumped(model))
    assert list(loaded.classes_) == ["setosa", "versicolor", "virginica"]
    assert list(loaded.predict([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])) == ["setosa", "virginica"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (poison.BYTES_OF_A_COUNT, r"calls bytes\(17179869184\), an allocation no bytes of the file back"),
        (poison.BYTEARRAY_OF_A_COUNT, r"calls bytearray\(17179869184\)"),
        (poison.LIST_OF_A_RANGE, r"builtins.range would allocate 17179869184 .* more than the 54-byte file backs"),
        (poison.RECONSTRUCTED_ARRAY, r"numpy's _reconstruct would allocate 17179869184"),
        (poison.array_claiming_more_than_the_file(), r"an array claims 17179869184 bytes of data, the file has"),
    ],
    ids=["bytes", "bytearray", "list_of_range", "reconstruct", "joblib_array"],
)
def test_an_allocation_the_file_does_not_back_is_refused_before_it_happens(data: bytes, message: str) -> None:
    assert len(data) < 300
    with pytest.raises(pickle.UnpicklingError, match=message):
        load_restricted(data)
