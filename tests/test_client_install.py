"""The client-only install: a wheel built from this tree, installed without the server extra into a fresh venv,
calls a real server with the sync and the async client, and scikit-learn is not importable there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import IRIS_PROBES, PROJECT_ROOT, ServerProcess, iris_rows

pytestmark = pytest.mark.slow

# What the wheel is built from: the packages pyproject.toml lists, the SQL they apply, the metadata.
SOURCES = ("pyproject.toml", "README.md", "predserve", "client", "server", "protos", "db/migrations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generated = sorted(p.name for p in (PROJECT_ROOT / "protos").glob("*_pb2*.py"))
    assert "predserve_pb2.py" in generated and "predserve_pb2_grpc.py" in generated, "run `make proto` first"
    # Built from a copy, so the build's own files (build/, *.egg-info) never land in the work tree.
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        origin = PROJECT_ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.db*"))
        else:
            shutil.copy2(origin, source / name)
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: the venv's setuptools builds it, offline and in about a second.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)])
    (built,) = dist.glob("predserve-*.whl")
    return built


@pytest.fixture(scope="module")
def client_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its base dependencies only (pip takes grpcio and protobuf from its cache
    or the index); returns its python."""
    venv = tmp_path_factory.mktemp("client-venv")
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", str(wheel)])
    return python


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("install-server")).start()
    with process.client() as client:  # this venv's client: the server side of the story
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    yield process
    process.kill()


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def in_venv(python: Path, code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs code isolated (-I: no PYTHONPATH, no user site) from a folder outside the work tree, so every
    import comes from the venv."""
    return subprocess.run(
        [str(python), "-I", "-c", textwrap.dedent(code), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_wheel_holds_the_generated_protos_and_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {"predserve/protos/predserve_pb2.py", "predserve/protos/predserve_pb2_grpc.py", "predserve/client/aio.py"}
    assert package | {"predserve/server/__main__.py", "predserve/__init__.py"} <= names
    assert "predserve/db/migrations/sqlite/0001_phase4_baseline.sql" in names
    assert "predserve/db/migrations/0004_add_artifact_signature.sql" in names  # both dialects
    assert "predserve/db/migrations/postgresql/0001_phase4_baseline.sql" in names


def test_the_wheel_adds_exactly_one_top_level_package(wheel: Path) -> None:
    """A service with modules named server, client or protos of its own installs predserve beside them."""
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    (dist_info,) = [top for top in tops if top.endswith(".dist-info")]
    assert tops == {"predserve", dist_info}


def test_the_base_install_has_no_server_dependencies(client_venv: Path, tmp_path: Path) -> None:
    for module in ("sklearn", "numpy", "scipy", "joblib", "psycopg", "treelite", "tqdm", "grpc_reflection"):
        result = in_venv(client_venv, f"import {module}", tmp_path)
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, module
    installed = in_venv(
        client_venv, "import predserve, grpc, google.protobuf, grpc_health; print(predserve.__file__)", tmp_path
    )
    assert installed.returncode == 0, installed.stderr
    assert "site-packages" in installed.stdout  # the wheel's copy, not the work tree's


def test_the_client_only_install_calls_a_running_server(
    client_venv: Path, trained: ServerProcess, tmp_path: Path
) -> None:
    code = """
        import asyncio, json, sys
        from predserve import AsyncPredserveClient, ModelNotFound, PredserveClient

        target, rows = sys.argv[1], json.loads(sys.argv[2])
        with PredserveClient(target) as client:
            sync = client.predict("iris_classifier", rows)
            try:
                client.predict("no_such_model", rows)
            except ModelNotFound as error:
                missing = error.code.name

        async def call():
            async with AsyncPredserveClient(target) as client:
                return await client.predict("iris_classifier", rows, include_probabilities=True)

        answer = asyncio.run(call())
        print(json.dumps({
            "sync": [p.value.integer for p in sync.predictions],
            "async": [p.value.integer for p in answer.predictions],
            "set": [sync.prediction_set_id, answer.prediction_set_id],
            "probabilities": len(answer.predictions[0].probabilities),
            "missing": missing,
        }))
    """
    result = in_venv(client_venv, code, tmp_path, trained.target, json.dumps(IRIS_PROBES))
    assert result.returncode == 0, result.stderr
    with trained.client() as client:
        expected = client.predict("iris_classifier", IRIS_PROBES)
    answers = json.loads(result.stdout)
    assert answers["sync"] == answers["async"] == [p.value.integer for p in expected.predictions]
    assert answers["set"] == [expected.prediction_set_id] * 2
    assert answers["probabilities"] == 3
    assert answers["missing"] == "NOT_FOUND"


def test_the_cli_and_the_server_script_say_what_is_missing(
    client_venv: Path, trained: ServerProcess, tmp_path: Path
) -> None:
    bin_dir = client_venv.parent
    health = subprocess.run(
        [str(bin_dir / "predserve"), "--target", trained.target, "health"], capture_output=True, text=True, timeout=60
    )
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr

    csv_file = tmp_path / "small.csv"
    csv_file.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    ingested = subprocess.run(
        [
            str(bin_dir / "predserve"),
            "--target",
            trained.target,
            "ingest",
            "--dataset",
            "small",
            "--csv",
            str(csv_file),
            "--target-column",
            "y",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ingested.returncode == 0 and "ingested 20 rows" in ingested.stdout, ingested.stderr  # no tqdm: no bar

    builtin = subprocess.run(
        [str(bin_dir / "predserve"), "--target", trained.target, "ingest", "--dataset", "iris", "--builtin", "iris"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert builtin.returncode == 1
    assert builtin.stderr.count("\n") == 1 and "pip install scikit-learn" in builtin.stderr, builtin.stderr

    server = subprocess.run([str(bin_dir / "predserve-server")], capture_output=True, text=True, timeout=60)
    assert server.returncode == 1
    assert server.stderr == "predserve-server: the server needs its dependencies: pip install 'predserve[server]'\n"


def test_the_client_only_install_predicts_by_name_without_pandas(
    client_venv: Path, trained: ServerProcess, tmp_path: Path
) -> None:
    """Dicts build a Table with the standard library only, and `predict --csv` reads with the csv module where
    pyarrow is not installed."""
    names, _ = iris_rows()
    code = """
        import json, sys
        from predserve import PredserveClient

        target, names, rows = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
        with PredserveClient(target) as client:
            answer = client.predict("iris_classifier", [dict(zip(names, row)) for row in rows])
        print(json.dumps([p.value.integer for p in answer.predictions]))
        print("pandas" in sys.modules, "numpy" in sys.modules)
    """
    result = in_venv(client_venv, code, tmp_path, trained.target, json.dumps(names), json.dumps(IRIS_PROBES))
    assert result.returncode == 0, result.stderr
    by_name, loaded = result.stdout.splitlines()
    with trained.client() as client:
        expected = [p.value.integer for p in client.predict("iris_classifier", IRIS_PROBES).predictions]
    assert json.loads(by_name) == expected
    assert loaded == "False False"

    source = tmp_path / "probes.csv"
    source.write_text(
        ",".join(reversed(names)) + "\n" + "".join(",".join(map(str, reversed(r))) + "\n" for r in IRIS_PROBES)
    )
    scored = subprocess.run(
        [
            str(client_venv.parent / "predserve"),
            "--target",
            trained.target,
            "predict",
            "--model-type",
            "iris_classifier",
            "--csv",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scored.returncode == 0, scored.stderr
    assert [int(line.rsplit(",", 1)[1]) for line in scored.stdout.splitlines()[1:]] == expected
