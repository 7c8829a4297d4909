"""Training on typed data and every set's input schema (issue 23 items 2 and 3), on a real server and SQLite.

A CSV with strings and empty cells is ingested as a typed table; every recipe trains on it; the artifact
answers `joblib.load(path).predict(df)` in this process as the server's reloaded pipeline does; a DataFrame
pipeline fitted here is imported, its schema inferred (or stated with --sample-csv) and shown by ListModels,
ListPredictionSets, the CLI and V2 ModelMetadata; sets of numbers show a numbers schema.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from predserve.client.cli import main as cli_main
from predserve.protos import grpc_predict_v2_pb2 as v2
from predserve.protos import grpc_predict_v2_pb2_grpc as v2_grpc
from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from predserve.server.services.catalog import CATALOG, CLASSIFICATION
from tests.support import ServerProcess, iris_rows

COLUMNS = [("age", "number"), ("plan", "string"), ("income", "number"), ("country", "string")]
SCHEMA = [{"name": name, "type": kind} for name, kind in COLUMNS]
PLANS, COUNTRIES = ["basic", "pro", "team"], ["fr", "de", "us"]
# Rows the server never saw: a missing value in every column, and unseen categories.
PROBES = pd.DataFrame(
    {
        "age": [30.0, np.nan, 61.0, 45.0],
        "plan": ["pro", "basic", None, "enterprise"],
        "income": [np.nan, 52_000.0, 18_000.0, 40_000.0],
        "country": ["fr", None, "jp", "de"],
    }
)


def churn_csv(path: Path, target: str, rows: int = 240) -> Path:
    """age, plan, income, country and the target, churned or spend; one cell in ten of each feature column empty."""
    rng = np.random.default_rng(7)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["age", "plan", "income", "country", target])
        for i in range(rows):
            age, plan = round(float(rng.normal(42, 12)), 1), PLANS[i % 3]
            income, country = round(float(rng.normal(50_000, 12_000))), COUNTRIES[int(rng.integers(3))]
            churned = "yes" if (age < 40) != (plan == "pro") else "no"
            spend = round(age * 3 + (40 if plan == "team" else 0) + income / 5000, 2)
            cells: list[Any] = [age, plan, income, country]
            cells = ["" if (i * 7 + j) % 10 == 3 else cell for j, cell in enumerate(cells)]
            writer.writerow([*cells, churned if target == "churned" else spend])
    return path


def table_of(frame: pd.DataFrame, types: dict[str, str]) -> pb.Table:
    """A typed table as IngestHistory and Predict take it: numbers with NaN, strings with their missing rows."""
    table = pb.Table()
    for name in frame.columns:
        column = table.columns.add(name=name)
        values = frame[name].tolist()
        if types[name] == "number":
            column.numbers.values.extend(float(v) for v in values)
        else:
            missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and math.isnan(v))]
            column.strings.values.extend("" if i in missing else str(v) for i, v in enumerate(values))
            column.strings.missing.extend(missing)
    return table


def cli(server: ServerProcess, *args: str, capsys: pytest.CaptureFixture[str]) -> Any:
    code = cli_main(["--target", server.target, "--json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("typed")
    process = ServerProcess(workdir).start()
    with process.client() as client:
        # Typed ingest as a user runs it: CSV files with strings and empty cells, their types inferred.
        client.ingest_csv("churn", churn_csv(workdir / "churn.csv", "churned"), "churned")
        client.ingest_csv("spend", churn_csv(workdir / "spend.csv", "spend"), "spend")
        datasets = {d.name: d for d in client.list_datasets().datasets}
        assert [(c.name, c.type) for c in datasets["churn"].columns] == [
            (name, pb.NUMBER if kind == "number" else pb.STRING) for name, kind in COLUMNS
        ]
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    yield process
    process.kill()


def artifact(server: ServerProcess, model_path: str) -> Any:
    return joblib.load(server.models_dir / model_path)


@pytest.mark.parametrize("algorithm", sorted(CATALOG))
def test_each_recipe_trains_on_a_typed_dataset_and_its_artifact_takes_a_dataframe(
    server: ServerProcess, algorithm: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = "churn" if CATALOG[algorithm].task == CLASSIFICATION else "spend"
    with server.client() as client:
        trained = client.train(f"typed_{algorithm}", dataset=dataset, algorithm=algorithm)
    pipeline = artifact(server, trained.model_artifact_path)
    # In a notebook: the file takes a DataFrame by column name, in any column order, missing values and unseen
    # categories included; pandas' NaN for a missing string answers as None does.
    answers = pipeline.predict(PROBES)
    assert np.array_equal(pipeline.predict(PROBES[["country", "income", "plan", "age"]]), answers)
    assert np.array_equal(pipeline.predict(PROBES.replace({None: np.nan})), answers)
    prepare = pipeline.named_steps["prepare"]
    assert [(name, list(columns)) for name, _, columns in prepare.transformers] == [
        ("numbers", ["age", "income"]),
        ("strings", ["plan", "country"]),
    ]
    sets = cli(server, "sets", "--model-type", f"typed_{algorithm}", capsys=capsys)["prediction_sets"]
    assert sets[0]["input_schema"] == SCHEMA
    # a compiled form: the ColumnTransformer as numpy in front of the estimator's form, proven on edges
    assert sets[0]["runtime"]["answering"].startswith("table-"), sets[0]["runtime"]
    assert sets[0]["runtime"]["rows_checked"] > 20
    models = {m["model_type"]: m for m in cli(server, "models", capsys=capsys)["models"]}
    assert models[f"typed_{algorithm}"]["input_schema"] == SCHEMA
    assert models[f"typed_{algorithm}"]["loaded"]


def test_typed_sets_reload_without_a_refit_and_answer_as_the_artifact(server: ServerProcess) -> None:
    """After a restart each typed set passes its self-check (rows with strings and None rebuilt as a DataFrame);
    the server's answers equal the artifact's in this process."""
    with server.client() as client:
        before = {m.model_type: m for m in client.list_models().models if m.model_type.startswith("typed_")}
    assert len(before) == len(CATALOG)
    server.stop()
    server.start()
    with server.client() as client:
        after = {m.model_type: m for m in client.list_models().models if m.model_type.startswith("typed_")}
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.PredserveStub(channel)
        for model_type, status in after.items():
            assert status.loaded, status.status_message
            assert status.prediction_set_id == before[model_type].prediction_set_id
            expected = artifact(server, status.model_artifact_path).predict(PROBES).tolist()
            request = pb.PredictRequest(model_type=model_type, table=table_of(PROBES, dict(COLUMNS)))
            answered = [_value(p.value) for p in stub.Predict(request, timeout=30).predictions]
            assert answered == pytest.approx(expected) if isinstance(expected[0], float) else answered == expected


def _value(target: pb.Target) -> Any:
    return getattr(target, target.WhichOneof("value"))


def dataframe_pipeline() -> Pipeline:
    """The issue's churn pipeline: numbers imputed and scaled, strings one-hot with unknown categories ignored."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, 200),
            "plan": rng.choice(PLANS, 200),
            "income": rng.normal(50_000, 10_000, 200),
            "country": rng.choice(COUNTRIES, 200),
        }
    )
    labels = np.where((frame["age"] < 40) != (frame["plan"] == "pro"), "yes", "no")
    prepare = ColumnTransformer(
        [
            ("numbers", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), ["age", "income"]),
            ("strings", OneHotEncoder(handle_unknown="ignore"), ["plan", "country"]),
        ]
    )
    return Pipeline([("prepare", prepare), ("model", LogisticRegression())]).fit(frame, labels)


def joblib_bytes(pipeline: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    return buffer.getvalue()


def test_an_imported_dataframe_pipeline_has_its_schema_inferred_and_shown(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = dataframe_pipeline()
    with server.client() as client:
        scored = client.import_model("churn_imported", joblib_bytes(pipeline), dataset="churn")
        bare = client.import_model("churn_bare", joblib_bytes(pipeline))
        models = {m.model_type: m for m in client.list_models().models}
    # Scored on the typed dataset, every row: the pipeline's own answers compared with the targets.
    assert scored.metrics["evaluated_rows"] == 240 and 0.0 <= scored.metrics["accuracy"] <= 1.0
    assert bare.metrics == {}
    # In the order it was fitted on (feature_names_in_), not the ColumnTransformer's.
    inferred = [("age", pb.NUMBER), ("plan", pb.STRING), ("income", pb.NUMBER), ("country", pb.STRING)]
    for model_type in ("churn_imported", "churn_bare"):
        assert [(c.name, c.type) for c in models[model_type].input_schema] == inferred
        assert models[model_type].loaded, models[model_type].status_message
    listed = cli(server, "sets", "--model-type", "churn_imported", capsys=capsys)["prediction_sets"][0]
    assert listed["input_schema"] == [
        {"name": n, "type": "string" if t == pb.STRING else "number"} for n, t in inferred
    ]
    with grpc.insecure_channel(server.target) as channel:
        metadata = v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            v2.ModelMetadataRequest(name="churn_imported"), timeout=10
        )
        answered = pb_grpc.PredserveStub(channel).Predict(
            pb.PredictRequest(model_type="churn_imported", table=table_of(PROBES, dict(COLUMNS))), timeout=10
        )
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("age", "FP64", [-1]),
        ("plan", "BYTES", [-1]),
        ("income", "FP64", [-1]),
        ("country", "BYTES", [-1]),
    ]
    assert [p.value.label for p in answered.predictions] == pipeline.predict(PROBES).tolist()


def text_pipeline() -> tuple[Pipeline, pd.DataFrame]:
    """A free-text column: no encoder learnt categories for it, so only the importer can say it holds strings."""
    frame = pd.DataFrame(
        {"age": [20.0, 35.0, 50.0, 65.0] * 5, "comment": ["great service", "too slow", "fine", "will leave"] * 5}
    )
    labels = np.array(["no", "yes", "no", "yes"] * 5)
    prepare = ColumnTransformer([("numbers", "passthrough", ["age"]), ("text", TfidfVectorizer(), "comment")])
    return Pipeline([("prepare", prepare), ("model", LogisticRegression())]).fit(frame, labels), frame


def test_sample_csv_states_what_inference_cannot_tell(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, frame = text_pipeline()
    path = tmp_path / "comments.joblib"
    joblib.dump(pipeline, path)
    sample = tmp_path / "sample.csv"
    frame.assign(churned="no").head(3).to_csv(sample, index=False)
    # Inferred, the text column is a number: the self-check on spread numbers fails, and nothing is recorded.
    assert cli_main(["--target", server.target, "import", "--model-type", "comments", "--artifact", str(path)]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    document = cli(
        server,
        "import",
        "--model-type",
        "comments",
        "--artifact",
        str(path),
        "--sample-csv",
        str(sample),
        "--target-column",
        "churned",
        capsys=capsys,
    )
    assert document["prediction_set_id"] > 0
    models = {m["model_type"]: m for m in cli(server, "models", capsys=capsys)["models"]}
    assert models["comments"]["input_schema"] == [
        {"name": "age", "type": "number"},
        {"name": "comment", "type": "string"},
    ]
    # A statement naming a column the pipeline does not take is refused by name.
    code = cli_main(
        ["--target", server.target, "import", "--model-type", "comments", "--artifact", str(path)]
        + ["--column-type", "coment=string"]
    )
    assert code == 1
    assert "the pipeline does not take: coment" in capsys.readouterr().err


def test_sets_of_numbers_show_a_numbers_schema(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    names, _ = iris_rows()
    numbers = [{"name": name, "type": "number"} for name in names]
    assert (
        cli(server, "sets", "--model-type", "iris_classifier", capsys=capsys)["prediction_sets"][0]["input_schema"]
        == numbers
    )
    models = {m["model_type"]: m for m in cli(server, "models", capsys=capsys)["models"]}
    assert models["iris_classifier"]["input_schema"] == numbers
    with grpc.insecure_channel(server.target) as channel:
        metadata = v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            v2.ModelMetadataRequest(name="iris_classifier"), timeout=10
        )
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("features", "FP64", [-1, 4])]
