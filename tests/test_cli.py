"""The predserve CLI as a person runs it: real subprocesses against a real server."""

from __future__ import annotations

from pathlib import Path

from tests.support import ServerProcess, cli, cli_json


def test_ingest_train_predict_story(server: ServerProcess, tmp_path: Path) -> None:
    assert cli_json(server, "ingest", "--dataset", "iris", "--builtin", "iris")["total_rows"] == 150
    trained = cli_json(server, "train", "--model-type", "logistic_regression", "--dataset", "iris")
    assert trained["model_type"] == "logistic_regression"  # --algorithm defaults to the model type
    assert (server.models_dir / trained["model_artifact_path"]).is_file()
    assert trained["metrics"]["accuracy"] > 0.8

    predicted = cli_json(
        server,
        "predict",
        "--model-type",
        "logistic_regression",
        "--row",
        "5.1,3.5,1.4,0.2",
        "--row",
        "6.7,3.0,5.2,2.3",
        "--proba",
    )
    assert predicted["prediction_set_id"] == trained["prediction_set_id"]
    assert predicted["predictions"] == [0, 2]
    assert len(predicted["probabilities"][0]) == 3

    models = cli_json(server, "models")["models"]
    assert [(m["model_type"], m["prediction_set_id"], m["loaded"]) for m in models] == [
        ("logistic_regression", trained["prediction_set_id"], True)
    ]
    assert models[0]["model_artifact_path"] == trained["model_artifact_path"]
    sets = cli_json(server, "sets", "--model-type", "logistic_regression")["prediction_sets"]
    assert [s["is_current"] for s in sets] == [True]
    assert cli_json(server, "health") == {"status": "SERVING"}

    table = cli(server, "predict", "--model-type", "logistic_regression", "--row", "5.1,3.5,1.4,0.2")
    assert table.returncode == 0 and "prediction set" in table.stdout


def test_csv_ingest_with_string_labels(server: ServerProcess, tmp_path: Path) -> None:
    csv_file = tmp_path / "fruit.csv"
    lines = ["weight,colour,kind"] + [f"{100 + i},{i % 3},{'apple' if i < 15 else 'melon'}" for i in range(30)]
    csv_file.write_text("\n".join(lines) + "\n")
    ingested = cli_json(server, "ingest", "--dataset", "fruit", "--csv", str(csv_file), "--target-column", "kind")
    assert ingested["rows_added"] == 30
    cli_json(
        server,
        "train",
        "--model-type",
        "fruit",
        "--algorithm",
        "random_forest",
        "--dataset",
        "fruit",
        "--param",
        "n_estimators=10",
    )
    assert cli_json(server, "predict", "--model-type", "fruit", "--row", "101,1")["predictions"] == ["apple"]


def test_errors_print_one_line_and_exit_non_zero(server: ServerProcess, tmp_path: Path) -> None:
    result = cli(server, "predict", "--model-type", "ghost", "--row", "1,2")
    assert result.returncode == 1
    assert result.stderr.strip() == "predserve: NOT_FOUND: unknown model type 'ghost'"
    bad_row = cli(server, "predict", "--model-type", "ghost", "--row", "1,x")
    assert bad_row.returncode == 1 and "not a comma-separated list" in bad_row.stderr
    bad_param = cli(server, "train", "--model-type", "m", "--dataset", "d", "--param", "novalue")
    assert bad_param.returncode == 1 and "KEY=VALUE" in bad_param.stderr
    missing = cli(server, "ingest", "--dataset", "d", "--csv", str(tmp_path / "absent.csv"), "--target-column", "y")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
