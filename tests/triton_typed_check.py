"""The stock Triton client (tritonclient[grpc]) calling a typed model one input per column: run by
tests/test_predict_by_name.py, in a process of its own (tritonclient registers the `inference` proto package, as
predserve's V2 bindings do). It imports nothing from predserve; the answers it must see are passed in as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as triton

# Run as a script, with tests/ first on sys.path: the stock-client check of numbers shares its runner.
from triton_client_check import run_checks, target_and_expected
from tritonclient.utils import InferenceServerException

NUMBERS, STRINGS = ("age", "income"), ("plan", "country")


def column_inputs(rows: list[dict[str, Any]], shape_2d: bool, number_dtype: Any = np.float64) -> list[Any]:
    inputs = []
    datatype = {np.float64: "FP64", np.float32: "FP32", np.int64: "INT64"}[number_dtype]
    for name in (*STRINGS, *NUMBERS):  # not the model's order: columns are matched by name
        shape = [len(rows), 1] if shape_2d else [len(rows)]
        if name in NUMBERS:
            values = np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=np.float64)
            tensor = triton.InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(values.astype(number_dtype).reshape(shape))
        else:
            tensor = triton.InferInput(name, shape, "BYTES")
            tensor.set_data_from_numpy(np.array([r[name].encode() for r in rows], dtype=np.object_).reshape(shape))
        inputs.append(tensor)
    return inputs


def main() -> int:
    target, expected = target_and_expected(__doc__)
    rows = expected["rows"]
    client = triton.InferenceServerClient(target)
    checks: list[tuple[str, Callable[[], None]]] = []

    def same_answers(result: Any) -> None:
        assert result.as_numpy("predict").tolist() == expected["predict"], result.as_numpy("predict")
        np.testing.assert_array_equal(result.as_numpy("predict_proba"), expected["predict_proba"])

    checks.append(("shape [n, 1]", lambda: same_answers(client.infer("churn", column_inputs(rows, True)))))
    checks.append(("shape [n]", lambda: same_answers(client.infer("churn", column_inputs(rows, False)))))
    checks.append(
        (
            "content_type pd",
            lambda: same_answers(client.infer("churn", column_inputs(rows, True), parameters={"content_type": "pd"})),
        )
    )

    def refused_extra_column() -> None:
        inputs = column_inputs(rows, True)
        extra = triton.InferInput("plann", [len(rows), 1], "BYTES")
        extra.set_data_from_numpy(np.array([[b"pro"]] * len(rows), dtype=np.object_))
        try:
            client.infer("churn", [*inputs, extra])
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.INVALID_ARGUMENT", exc.status()
            assert "column 'plann' is not an input of model type 'churn'" in (exc.message() or ""), exc.message()
            return
        raise AssertionError("an extra column was accepted")

    checks.append(("extra column refused", refused_extra_column))

    def metadata() -> None:
        inputs = client.get_model_metadata("churn", as_json=True)["inputs"]
        assert [(i["name"], i["datatype"]) for i in inputs] == [
            ("age", "FP64"),
            ("income", "FP64"),
            ("plan", "BYTES"),
            ("country", "BYTES"),
        ], inputs

    checks.append(("metadata lists one input per column", metadata))
    code = run_checks(checks)
    client.close()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
