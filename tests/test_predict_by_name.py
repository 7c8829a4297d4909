"""Predict with named, typed columns (issue 23 items 4 and 5): in process through the service, then on a real
server through predserve.v1, V2's one input per column, both clients and the CLI. Every answer is compared with
the pipeline's own `predict(DataFrame)`, computed here from the artifact the server stored; every bad input gets
INVALID_ARGUMENT naming the column (and the row), and the server keeps serving."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pandas as pd
import pytest

from predserve.client.aio import AsyncPredserveClient
from predserve.client.library import PredserveClientError, target_value
from predserve.client.named_rows import table_message
from predserve.protos import grpc_predict_v2_pb2 as v2
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc
from predserve.protos import predserve_pb2 as pb
from predserve.server.api import converters, v2_converters
from predserve.server.errors import InvalidArgument
from tests.churn import (
    PROBES,
    SCHEMA,
    churn_pipeline,
    expected_frame,
    loaded_model,
    prediction_service,
)
from tests.support import PROJECT_ROOT, ServerProcess, cli, iris_rows, run_triton_check

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TRITON_CHECK = Path(__file__).with_name("triton_typed_check.py")


def request_of(rows: Any, model_type: str = "churn") -> pb.PredictRequest:
    return pb.PredictRequest(model_type=model_type, table=table_message(rows), include_probabilities=True)


# --- in process: the service and the converters -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Any]:
    return {
        "churn": churn_pipeline(),
        "strict": churn_pipeline(handle_unknown="error"),
        "no_imputer": churn_pipeline(impute_numbers=False),
    }


@pytest.fixture(scope="module")
def service(pipelines: dict[str, Any]) -> Any:
    iris = loaded_iris()
    return prediction_service(
        loaded_model(pipelines["churn"]),
        loaded_model(pipelines["strict"], "strict", 2),
        loaded_model(pipelines["no_imputer"], "no_imputer", 3),
        iris,
    )


def loaded_iris() -> Any:
    from sklearn.linear_model import LogisticRegression

    from predserve.server.domain import PredictionSetRecord
    from predserve.server.model_store import LoadedModel

    names, rows = iris_rows()
    pipeline = LogisticRegression(max_iter=500).fit([r for r, _ in rows], [y for _, y in rows])
    record = PredictionSetRecord(
        id=4,
        model_type="iris",
        dataset="iris",
        created_at="",
        is_current=True,
        metrics={},
        feature_names=tuple(names),
        classes=(0, 1, 2),
    )
    return LoadedModel(record=record, pipeline=pipeline, load_seconds=0.0)


def test_a_table_in_any_column_order_gets_the_pipelines_answer(service: Any, pipelines: dict[str, Any]) -> None:
    expected = expected_frame(PROBES)
    for order in (["age", "income", "plan", "country"], ["country", "plan", "income", "age"]):
        rows = [{name: row[name] for name in order} for row in PROBES]
        request = request_of(rows)
        result = service.predict("churn", converters.predict_input(request), 0, True)
        assert result.values == pipelines["churn"].predict(expected).tolist()
        np.testing.assert_array_equal(result.probabilities, pipelines["churn"].predict_proba(expected))


def test_number_columns_decode_as_one_float64_array(service: Any) -> None:
    rows = [
        {"age": float(i), "income": None if i % 10 == 0 else 40.0 + i, "plan": "pro", "country": "fr"}
        for i in range(1000)
    ]
    table = converters.predict_input(request_of(rows))
    age = next(column for column in table.columns if column.name == "age")
    assert isinstance(age.values, np.ndarray) and age.values.dtype == np.float64 and len(age.values) == 1000
    income = next(column for column in table.columns if column.name == "income")
    assert np.isnan(income.values[::10]).all()
    assert len(service.predict("churn", table).values) == 1000


def test_a_numbers_only_model_takes_a_table_by_name(service: Any) -> None:
    names, rows = iris_rows()
    probes = [dict(zip(reversed(names), reversed(features), strict=True)) for features, _ in rows[:5]]
    by_name = service.predict("iris", converters.predict_input(request_of(probes, "iris")))
    by_rows = service.predict("iris", [features for features, _ in rows[:5]])
    assert by_name.values == by_rows.values


BAD_TABLES: list[tuple[str, str, Any, str]] = [
    ("missing column", "churn", [{"age": 30, "income": 1.0, "plan": "pro"}], "column 'country' (string) missing"),
    (
        "extra column",
        "churn",
        [{**PROBES[0], "plann": "pro"}],
        "column 'plann' is not an input of model type 'churn', which takes age (number), income (number), plan",
    ),
    (
        "string in a number column",
        "churn",
        [PROBES[0], {**PROBES[1], "age": "old"}],
        "column 'age' takes numbers; row 1 holds the string 'old'",
    ),
    (
        "number in a string column",
        "churn",
        [{**PROBES[0], "plan": 3}],
        "column 'plan' takes strings; holds the number 3.0",
    ),
    (
        "unknown category where the encoder refuses it",
        "strict",
        [PROBES[3], {**PROBES[3], "country": "jp"}],
        "column 'country' row 1: the pipeline does not take 'jp' (Found unknown categories ['jp']",
    ),
    (
        "missing value the pipeline cannot impute",
        "no_imputer",
        [PROBES[3], PROBES[3], PROBES[0]],
        "column 'income' row 2 has no value, and this pipeline cannot fill one in (Input X contains NaN",
    ),
    (
        "missing value in a numbers-only model",
        "iris",
        [{"sepal length (cm)": None}],
        "column 'sepal length (cm)' has no value",
    ),
]


@pytest.mark.parametrize(("name", "model_type", "rows", "message"), BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_bad_tables_are_refused_by_column(service: Any, name: str, model_type: str, rows: Any, message: str) -> None:
    if model_type == "iris":
        names, _ = iris_rows()
        rows = [{**{n: 1.0 for n in names}, **rows[0]}]
    with pytest.raises(InvalidArgument) as error:
        service.predict(model_type, converters.predict_input(request_of(rows, model_type)))
    assert message in str(error.value)


def test_an_unknown_category_is_ignored_where_the_encoder_ignores_it(service: Any, pipelines: dict[str, Any]) -> None:
    rows = [{**PROBES[3], "country": "jp", "plan": "enterprise"}]
    result = service.predict("churn", converters.predict_input(request_of(rows)), 0, True)
    np.testing.assert_array_equal(result.probabilities, pipelines["churn"].predict_proba(expected_frame(rows)))


def test_malformed_tables(service: Any) -> None:
    table = table_message(PROBES)
    table.columns[0].numbers.values.append(1.0)
    with pytest.raises(InvalidArgument, match="columns of different lengths: 'age' has 5 rows, 'income' has 4"):
        converters.predict_input(pb.PredictRequest(model_type="churn", table=table))
    doubled = table_message(PROBES[:1])
    doubled.columns.add().CopyFrom(doubled.columns[0])
    with pytest.raises(InvalidArgument, match="column 'age' appears twice"):
        converters.predict_input(pb.PredictRequest(model_type="churn", table=doubled))
    with pytest.raises(InvalidArgument, match="rows or a table, not both"):
        converters.predict_input(pb.PredictRequest(table=table_message(PROBES), rows=[pb.Row(features=[1.0])]))
    with pytest.raises(InvalidArgument, match="takes named, typed columns: age \\(number\\), income \\(number\\)"):
        service.predict("churn", [[1.0, 2.0, 3.0, 4.0]])


# --- a real server ----------------------------------------------------------------------------------------------


@dataclass
class TypedServer:
    process: ServerProcess
    pipelines: dict[str, Any]  # by model type, loaded from the models directory as the server stored them

    def frame_answer(self, model_type: str, rows: list[dict[str, Any]]) -> tuple[list[Any], np.ndarray]:
        pipeline, frame = self.pipelines[model_type], expected_frame(rows)
        return pipeline.predict(frame).tolist(), pipeline.predict_proba(frame)


@pytest.fixture(scope="module")
def typed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TypedServer]:
    workdir = tmp_path_factory.mktemp("typed")
    process = ServerProcess(workdir).start()
    loaded: dict[str, Any] = {}
    with process.client() as client:
        for model_type, pipeline in (
            ("churn", churn_pipeline()),
            ("strict", churn_pipeline(handle_unknown="error")),
            ("no_imputer", churn_pipeline(impute_numbers=False)),
        ):
            artifact = io.BytesIO()
            joblib.dump(pipeline, artifact)
            answer = client.import_model(model_type, artifact.getvalue())
            loaded[model_type] = joblib.load(process.models_dir / answer.model_artifact_path)
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train("iris", dataset="iris", algorithm="logistic_regression")
    yield TypedServer(process, loaded)
    process.kill()


def answer_of(response: pb.PredictResponse) -> tuple[list[Any], np.ndarray]:
    return [target_value(p.value) for p in response.predictions], np.array(
        [list(p.probabilities) for p in response.predictions]
    )


def test_the_input_schema_is_listed(typed_server: TypedServer) -> None:
    with typed_server.process.client() as client:
        model = next(m for m in client.list_models().models if m.model_type == "churn")
    assert [(c.name, c.type) for c in model.input_schema] == [
        ("age", pb.NUMBER),
        ("income", pb.NUMBER),
        ("plan", pb.STRING),
        ("country", pb.STRING),
    ]


def test_the_client_with_dicts_and_a_dataframe(typed_server: TypedServer) -> None:
    expected = typed_server.frame_answer("churn", PROBES)
    shuffled = pd.DataFrame(PROBES)[["country", "income", "plan", "age"]]
    with typed_server.process.client() as client:
        for rows in (PROBES, shuffled, expected_frame(PROBES)):
            labels, probabilities = answer_of(client.predict("churn", rows, include_probabilities=True))
            assert labels == expected[0]
            np.testing.assert_array_equal(probabilities, expected[1])


def test_the_async_client_with_dicts_and_a_dataframe(typed_server: TypedServer) -> None:
    expected = typed_server.frame_answer("churn", PROBES)

    async def calls() -> list[pb.PredictResponse]:
        async with AsyncPredserveClient(typed_server.process.target) as client:
            return [
                await client.predict("churn", PROBES, include_probabilities=True),
                await client.predict("churn", pd.DataFrame(PROBES), include_probabilities=True),
            ]

    for response in asyncio.run(calls()):
        labels, probabilities = answer_of(response)
        assert labels == expected[0]
        np.testing.assert_array_equal(probabilities, expected[1])


SERVER_CASES: list[tuple[str, str, Any, str]] = [
    ("missing column", "churn", [{"age": 30, "income": 1.0, "plan": "pro"}], "column 'country' (string) missing"),
    ("extra column", "churn", [{**PROBES[0], "plann": "pro"}], "column 'plann' is not an input of model type 'churn'"),
    (
        "string in a number column",
        "churn",
        [PROBES[0], {**PROBES[1], "age": "old"}],
        "column 'age' takes numbers; row 1",
    ),
    ("different lengths", "churn", "ragged", "columns of different lengths"),
    ("unknown category refused", "strict", [PROBES[3], {**PROBES[3], "country": "jp"}], "column 'country' row 1"),
    ("missing value not imputed", "no_imputer", [PROBES[3], PROBES[0]], "column 'income' row 1 has no value"),
    ("rows for a typed model", "churn", [[30.0, 1.0, 2.0, 3.0]], "send a table with these columns"),
]


@pytest.mark.parametrize(("name", "model_type", "rows", "message"), SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_bad_input_on_the_server(
    typed_server: TypedServer, name: str, model_type: str, rows: Any, message: str
) -> None:
    with typed_server.process.client() as client:
        with pytest.raises(PredserveClientError) as error:
            if rows == "ragged":
                table = table_message(PROBES)
                del table.columns[1].numbers.values[0]
                client.predict(model_type, table)
            else:
                client.predict(model_type, rows)
        assert error.value.code is INVALID, error.value.details
        assert message in error.value.details
        assert "Traceback" not in error.value.details
        # ...and the server keeps serving.
        assert answer_of(client.predict("churn", PROBES))[0] == typed_server.frame_answer("churn", PROBES)[0]


def test_an_unknown_category_is_ignored_on_the_server(typed_server: TypedServer) -> None:
    rows = [{**PROBES[3], "country": "jp"}]
    with typed_server.process.client() as client:
        _, probabilities = answer_of(client.predict("churn", rows, include_probabilities=True))
    np.testing.assert_array_equal(probabilities, typed_server.frame_answer("churn", rows)[1])


# --- V2: one input per column -------------------------------------------------------------------------------------


def column_inputs(rows: list[dict[str, Any]], raw: bool, number_type: str = "FP64") -> v2.ModelInferRequest:
    """MLServer's pandas form: one input per column, named as the column; numbers FP64 (NaN missing), strings BYTES
    (a column with missing strings as pd_json, null where missing)."""
    request = v2.ModelInferRequest(model_name="churn")
    request.parameters["content_type"].string_param = "pd"
    frame = expected_frame(rows)
    for column in SCHEMA.columns:
        values = frame[column.name]
        tensor = request.inputs.add(name=column.name, shape=[len(rows), 1])
        if column.type.value == "number":
            tensor.datatype = number_type
            array = values.to_numpy(dtype=np.float64).astype(v2_converters.COLUMN_DTYPES[number_type])
            if raw:
                request.raw_input_contents.append(array.tobytes())
            else:
                getattr(tensor.contents, v2_converters.COLUMN_CONTENTS_FIELDS[number_type]).extend(array.tolist())
            continue
        tensor.datatype = "BYTES"
        missing = values.isna().any()
        if missing:
            tensor.parameters["content_type"].string_param = "pd_json"
        elements = [json.dumps(None if pd.isna(v) else v).encode() if missing else v.encode() for v in values]
        if raw:
            request.raw_input_contents.append(b"".join(len(e).to_bytes(4, "little") + e for e in elements))
        else:
            tensor.contents.bytes_contents.extend(elements)
    return request


@pytest.fixture
def v2_stub(typed_server: TypedServer) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(typed_server.process.target) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_v2_one_input_per_column(typed_server: TypedServer, v2_stub: Any, raw: bool) -> None:
    labels, probabilities = typed_server.frame_answer("churn", PROBES)
    response = v2_stub.ModelInfer(column_inputs(PROBES, raw), timeout=10)
    predict, proba = response.outputs
    if raw:
        got_labels = np.frombuffer(response.raw_output_contents[0], dtype="<i8").tolist()
        got_probabilities = np.frombuffer(response.raw_output_contents[1], dtype="<f8").reshape(list(proba.shape))
    else:
        got_labels = list(predict.contents.int64_contents)
        got_probabilities = np.array(proba.contents.fp64_contents).reshape(list(proba.shape))
    assert got_labels == labels
    np.testing.assert_array_equal(got_probabilities, probabilities)


def test_v2_integer_and_bool_columns_read_as_numbers(typed_server: TypedServer, v2_stub: Any) -> None:
    rows = [{**row, "income": 40.0} for row in PROBES]
    labels, _ = typed_server.frame_answer("churn", rows)
    for number_type in ("INT64", "INT32", "FP32"):
        request = column_inputs([{**row, "age": int(row["age"])} for row in rows], True, number_type)
        response = v2_stub.ModelInfer(request, timeout=10)
        assert np.frombuffer(response.raw_output_contents[0], dtype="<i8").tolist() == labels, number_type
    request = column_inputs(rows, False)
    age = next(t for t in request.inputs if t.name == "age")
    age.datatype = "BOOL"
    age.contents.ClearField("fp64_contents")
    age.contents.bool_contents.extend([True, False, True, True])
    bool_rows = [{**row, "age": float(flag)} for row, flag in zip(rows, [1, 0, 1, 1], strict=True)]
    response = v2_stub.ModelInfer(request, timeout=10)
    assert list(response.outputs[0].contents.int64_contents) == typed_server.frame_answer("churn", bool_rows)[0]


def test_v2_bad_columns(v2_stub: Any) -> None:
    def refused(request: v2.ModelInferRequest) -> str:
        with pytest.raises(grpc.RpcError) as error:
            v2_stub.ModelInfer(request, timeout=10)
        assert error.value.code() is INVALID, error.value.details()
        return error.value.details()

    missing = column_inputs(PROBES, False)
    del missing.inputs[3]
    assert "column 'country' (string) missing" in refused(missing)
    wrong_shape = column_inputs(PROBES, False)
    wrong_shape.inputs[0].shape[:] = [2, 2]
    assert refused(wrong_shape) == "input 'age' has shape [2, 2]; a column is [rows] or [rows, 1]"
    matrix = v2.ModelInferRequest(model_name="churn")
    matrix.inputs.add(name="features", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend([1, 2, 3, 4])
    assert "send a table with these columns (V2: one input per column" in refused(matrix)


def test_stock_triton_client_per_column(typed_server: TypedServer, tmp_path: Path) -> None:
    """tritonclient[grpc], unchanged, in a process of its own: one InferInput per column, BYTES for strings."""
    rows = [{**row, "plan": row["plan"] or "basic"} for row in PROBES]  # tritonclient's BYTES have no null
    labels, probabilities = typed_server.frame_answer("churn", rows)
    expected = {"rows": rows, "predict": labels, "predict_proba": probabilities.tolist()}
    run_triton_check(TRITON_CHECK, typed_server.process.target, expected, tmp_path)


# --- the CLI ------------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict[str, Any]], extra: bool = True) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["customer", "country", "age", "plan", "income"] if extra else ["country", "age", "plan", "income"]
        writer.writerow(header)
        for index, row in enumerate(rows):
            cells = {**{k: "" if v is None else v for k, v in row.items()}, "customer": f"c{index}"}
            writer.writerow([cells[name] for name in header])


def test_cli_scores_a_csv_file(typed_server: TypedServer, tmp_path: Path) -> None:
    rows = [dict(PROBES[i % 4], age=20 + i % 50) for i in range(250)]
    source, out = tmp_path / "customers.csv", tmp_path / "scored.csv"
    write_csv(source, rows)
    result = cli(
        typed_server.process,
        "predict",
        "--model-type",
        "churn",
        "--csv",
        str(source),
        "--out",
        str(out),
        "--proba",
        "--batch-rows",
        "64",
    )
    assert result.returncode == 0, result.stderr
    assert f"scored 250 rows of {source} with churn" in result.stdout
    scored = list(csv.DictReader(open(out, newline="")))
    labels, probabilities = typed_server.frame_answer("churn", rows)
    assert list(scored[0]) == [
        "customer",
        "country",
        "age",
        "plan",
        "income",
        "prediction",
        "probability_0",
        "probability_1",
    ]
    assert [r["customer"] for r in scored] == [f"c{i}" for i in range(250)]
    assert [int(r["prediction"]) for r in scored] == labels
    got = np.array([[float(r["probability_0"]), float(r["probability_1"])] for r in scored])
    np.testing.assert_array_equal(got, probabilities)
    assert scored[0]["income"] == "" and scored[1]["plan"] == ""  # missing cells stay empty


def test_cli_prints_scores_without_out_and_names_the_bad_line(typed_server: TypedServer, tmp_path: Path) -> None:
    source = tmp_path / "few.csv"
    write_csv(source, PROBES, extra=False)
    result = cli(typed_server.process, "predict", "--model-type", "churn", "--csv", str(source))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "country,age,plan,income,prediction"
    assert [int(line.rsplit(",", 1)[1]) for line in lines[1:]] == typed_server.frame_answer("churn", PROBES)[0]

    source.write_text(source.read_text().replace("61.5", "old"))
    bad = cli(typed_server.process, "predict", "--model-type", "churn", "--csv", str(source))
    assert bad.returncode == 1
    assert bad.stderr == f"predserve: {source}:3: column 'age' holds 'old', and the model takes numbers there\n"


def test_cli_predicts_one_typed_row_from_json(typed_server: TypedServer) -> None:
    row = {"age": 30, "plan": "pro", "country": "fr", "income": None}
    result = cli(
        typed_server.process, "--json", "predict", "--model-type", "churn", "--json", json.dumps(row), "--proba"
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    labels, probabilities = typed_server.frame_answer("churn", [row])
    assert document["predictions"] == labels
    np.testing.assert_array_equal(document["probabilities"], probabilities)

    wrong = cli(typed_server.process, "predict", "--model-type", "churn", "--json", json.dumps({"age": 30}))
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("predserve: INVALID_ARGUMENT: columns 'income' (number), 'plan' (string)")
    assert wrong.stderr.count("\n") == 1


def test_cli_scores_a_numbers_only_model_by_name(typed_server: TypedServer, tmp_path: Path) -> None:
    names, rows = iris_rows()
    source = tmp_path / "iris.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*reversed(names), "species"])
        writer.writerows([*reversed(features), label] for features, label in rows)
    result = cli(typed_server.process, "predict", "--model-type", "iris", "--csv", str(source))
    assert result.returncode == 0, result.stderr
    with typed_server.process.client() as client:
        expected = answer_of(client.predict("iris", [features for features, _ in rows]))[0]
    assert [int(line.rsplit(",", 1)[1]) for line in result.stdout.strip().splitlines()[1:]] == expected


def test_cli_obeys_the_servers_row_limit(tmp_path: Path, typed_server: TypedServer) -> None:
    """A chunk larger than --max-rows-per-request is refused (RESOURCE_EXHAUSTED, naming the limit) and sent again in
    pieces of the limit; the answers are the same."""
    limited = ServerProcess(tmp_path, extra_args=["--max-rows-per-request", "50"]).start()
    try:
        with limited.client() as client:
            artifact = io.BytesIO()
            joblib.dump(typed_server.pipelines["churn"], artifact)
            client.import_model("churn", artifact.getvalue())
        rows = [dict(PROBES[i % 4], age=20 + i % 50) for i in range(120)]
        source, out = tmp_path / "many.csv", tmp_path / "many-scored.csv"
        write_csv(source, rows)
        result = cli(limited, "predict", "--model-type", "churn", "--csv", str(source), "--out", str(out))
        assert result.returncode == 0, result.stderr
        scored = list(csv.DictReader(open(out, newline="")))
        assert [int(r["prediction"]) for r in scored] == typed_server.frame_answer("churn", rows)[0]
    finally:
        limited.kill()


def test_the_readme_predict_by_name_example(typed_server: TypedServer) -> None:
    readme = (PROJECT_ROOT / "docs" / "client.md").read_text()
    code = readme.split("<!-- predict-by-name-example -->\n```python\n", 1)[1].split("\n```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PREDSERVE_TARGET": typed_server.process.target},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    labels, refusal = result.stdout.splitlines()
    rows = [
        {"age": 30, "plan": "pro", "country": "fr", "income": None},
        {"plan": "basic", "age": 61, "country": "de", "income": 42.0},
    ]
    assert json.loads(labels) == typed_server.frame_answer("churn", rows)[0]
    assert refusal.startswith("column 'plann' is not an input of model type 'churn'")
