"""Train's data from the binary copy (data_segments): exactly the data its JSON rows give, whatever the targets,
however the rows arrived (tiny ingests, large ones, Phase-4 rows copied by migration 0007, rows an older release
wrote without a copy), in about the matrix's memory, on SQLite and PostgreSQL. Speed is in bench/training_data.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from predserve.server.app import Services, build_services
from predserve.server.domain import HistoryRow
from predserve.server.services.training import TrainCommand
from predserve.server.settings import ServerConfig

# The Phase-4 schema the migration tests start from (the same DDL as /work/shared/fixtures/phase4_schema.sql).
FIXTURES = Path(__file__).parent / "fixtures"


def services_on(root: Path, database_url: str | None = None) -> Services:
    return build_services(
        ServerConfig(db_path=root / "train.db", database_url=database_url, models_dir=root / "models")
    )


def command(dataset: str, algorithm: str = "logistic_regression", **params: str) -> TrainCommand:
    return TrainCommand(model_type="m", algorithm=algorithm, dataset=dataset, params=params)


def training_data(services: Services, dataset: str) -> Any:
    """What Train fits on, before it splits: the service's own data loading."""
    return services.training._training_data(command(dataset))


def drop_binary_copy(services: Services, dataset: str | None = None) -> None:
    with services.database.writing() as conn:
        if dataset is None:
            conn.execute("DELETE FROM data_segments")
        else:
            conn.execute("DELETE FROM data_segments WHERE dataset = ?", (dataset,))


def assert_same(columnar: Any, json_rows: Any) -> None:
    assert columnar.dataset == json_rows.dataset and columnar.feature_names == json_rows.feature_names
    assert columnar.features.dtype == json_rows.features.dtype == np.float64
    assert np.array_equal(columnar.features, json_rows.features)
    assert columnar.targets.dtype == json_rows.targets.dtype
    assert columnar.targets.tolist() == json_rows.targets.tolist()
    assert [type(t) for t in columnar.targets.tolist()] == [type(t) for t in json_rows.targets.tolist()]


def rows(matrix: np.ndarray, targets: Sequence[Any]) -> list[HistoryRow]:
    return [HistoryRow(tuple(f), t) for f, t in zip(matrix.tolist(), targets, strict=True)]


# Batches per dataset: each kind of target, and kinds mixed across batches and within one.
RNG = np.random.default_rng(11)
X = RNG.normal(size=(60, 3))
BATCHES: dict[str, list[list[Any]]] = {
    "ints": [[0, 1] * 10, [1, 0, 2] * 10],
    "floats": [[0.5, -1.25, 3.0] * 10, [2.0**60, -0.0, 1e-300] * 10],
    "ints_then_floats": [[1, 2] * 10, [0.5, 1.5] * 10],
    "mixed_numbers": [[1, 2.5, -3, 4.0] * 5, [7, 8] * 10],
    "labels": [["setosa", "versicolor"] * 10, ["virginica", "setosa", "x y"] * 10],
    "labels_and_numbers": [["yes", "no"] * 10, [1, 0] * 10, [1.0, 0.5] * 10],
    "huge_ints": [[2**62, -(2**63), 5] * 10, [2**70, 1] * 10],
}


def ingest_batches(services: Services) -> None:
    for dataset, batches in BATCHES.items():
        for batch in batches:
            services.history.ingest(dataset, ["a", "b", "c"], rows(X[: len(batch)], batch))


def check_every_kind_of_target_trains_on_the_same_data(services: Services) -> None:
    ingest_batches(services)
    columnar = {dataset: training_data(services, dataset) for dataset in BATCHES}
    drop_binary_copy(services)
    for dataset in BATCHES:
        assert_same(columnar[dataset], training_data(services, dataset))


def test_every_kind_of_target_trains_on_the_same_data(tmp_path: Path) -> None:
    check_every_kind_of_target_trains_on_the_same_data(services_on(tmp_path))


def test_every_kind_of_target_trains_on_the_same_data_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    services = services_on(tmp_path, postgres_url)
    try:
        check_every_kind_of_target_trains_on_the_same_data(services)
    finally:
        services.database.close()


def segment_sizes(services: Services, dataset: str) -> list[int]:
    with services.database.reading() as conn:
        found = conn.execute(
            "SELECT row_count FROM data_segments WHERE dataset = ? ORDER BY first_row_id", (dataset,)
        ).fetchall()
    return [int(row[0]) for row in found]


def test_tiny_ingests_share_a_segment_and_large_ones_are_split(tmp_path: Path) -> None:
    services = services_on(tmp_path)
    wide = RNG.normal(size=(40_000, 10))
    services.history.ingest("large", [], rows(wide, [int(v > 0) for v in wide[:, 0]]))
    assert segment_sizes(services, "large") == [13107, 13107, 13107, 679]  # 1 MiB of features each
    for index in range(60):
        services.history.ingest("tiny", [], rows(X[index : index + 1], [index % 2]))
    assert segment_sizes(services, "tiny") == [60]
    services.history.ingest("tiny", [], rows(wide[:5000, :3], [1, 0] * 2500))  # too large to merge into it
    assert segment_sizes(services, "tiny") == [60, 5000]
    columnar = {name: training_data(services, name) for name in ("large", "tiny")}
    drop_binary_copy(services)
    for name, data in columnar.items():
        assert_same(data, training_data(services, name))


def test_rows_written_without_a_binary_copy_are_read_from_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As an older release, still running beside this one, appends them: Train reads every row, from JSON."""
    services = services_on(tmp_path)
    services.history.ingest("d", [], rows(X[:30], [0, 1, 2] * 10))
    with sqlite3.connect(tmp_path / "train.db") as conn:
        conn.execute("INSERT INTO data_history (dataset, features, target) VALUES ('d', '[9.0, 9.0, 9.0]', '2')")
    with caplog.at_level(logging.WARNING, logger="predserve.server.storage.history"):
        data = training_data(services, "d")
    assert "dataset d: its binary copy holds 30 of its 31 rows; reading its JSON rows instead" in caplog.text
    assert len(data.targets) == 31 and data.features[-1].tolist() == [9.0, 9.0, 9.0]


def test_loading_holds_about_the_matrix_in_memory(tmp_path: Path) -> None:
    services = services_on(tmp_path)
    matrix = RNG.normal(size=(120_000, 10))
    services.history.history.append("big", [], matrix, [int(v > 0) for v in matrix[:, 0]])
    tracemalloc.start()
    try:
        data = services.history.history.load_columns("big")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data is not None and np.array_equal(data.features, matrix)
    assert peak < 2 * matrix.nbytes, f"{peak / matrix.nbytes:.2f}x the matrix"


# Phase-4 databases: one JSON document per row, no binary copy, upgraded in place by migration 0007.
LEGACY = {
    "numbers": [("[1.0, 2.0]", "0"), ("[3.0, 4.5]", "1"), ("[5, 6]", "1"), ("[7.25, -8]", "0")] * 5,
    "labels": [("[1.0, 2.0]", '"yes"'), ("[3.0, 4.0]", '"no"'), ("[0, 1e300]", '"yes"')] * 5,
    "odd_targets": [("[1.0, 2.0]", "true"), ("[3.0, 4.0]", "null"), ("[0, 1]", "2.5"), ("[2, 2]", '"x"')] * 5,
    "text_numbers": [('["1.5", 2]', "1"), ("[3, true]", "0")] * 6,  # numpy reads these as numbers, as before
    "ragged": [("[1.0, 2.0]", "0"), ("[3.0, 4.0, 5.0]", "1")] * 6,
    "not_numbers": [("[1, 2]", "1"), ('["a", 1]', "0")] * 6,
    "not_finite": [("[1.0, 2.0]", "0"), ("[3.0, NaN]", "1")] * 6,  # no check ever saw Phase-4 rows
}


def phase4_database(path: Path, legacy: dict[str, list[tuple[str, str]]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "phase4_schema.sql").read_text())
        for dataset, documents in legacy.items():
            conn.executemany(
                "INSERT INTO data_history (dataset, features, target) VALUES (?, ?, ?)",
                [(dataset, features, target) for features, target in documents],
            )


def outcome(services: Services, dataset: str) -> Any:
    """The data Train fits on, or the error it stops with."""
    try:
        return training_data(services, dataset)
    except Exception as exc:  # noqa: BLE001 - compared below, whatever it is
        return f"{type(exc).__name__}: {exc}"


def test_a_phase4_database_is_copied_in_place_and_trains_on_the_same_data(tmp_path: Path) -> None:
    phase4_database(tmp_path / "train.db", LEGACY)
    services = services_on(tmp_path)  # migrates, as the server does at start-up
    assert {name: sum(segment_sizes(services, name)) for name in LEGACY} == {
        "numbers": 20,
        "labels": 15,
        "odd_targets": 20,
        "text_numbers": 12,
        "ragged": 0,  # Train fails on these as before, from their JSON rows
        "not_numbers": 0,
        "not_finite": 12,  # and on this one as before, from its copy
    }
    columnar = {name: outcome(services, name) for name in LEGACY}
    assert columnar["ragged"] == "FailedPrecondition: dataset 'ragged' is not usable: row 1 has 3 features, expected 2"
    assert columnar["not_finite"] == (
        "FailedPrecondition: dataset 'not_finite' is not usable: row 1 holds a non-finite value (NaN or infinity)"
    )
    drop_binary_copy(services)
    for name in LEGACY:
        json_rows = outcome(services, name)
        if isinstance(json_rows, str):
            assert columnar[name] == json_rows
        else:
            assert_same(columnar[name], json_rows)
    # Ingesting into an upgraded Phase-4 dataset goes on as before: it has no feature names.
    assert services.history.ingest("numbers", [], rows(X[:2, :2], [1, 0])) == 22


def legacy_rows(count: int, features: int = 10) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(count, features))
    return matrix, [int(v) for v in (matrix[:, 0] + matrix[:, 1] > 0)]


def train_both_ways(upgraded: Services, json_only: Services, matrix: np.ndarray) -> None:
    """The same Train on the upgraded copy and on the JSON rows alone: the same data, model and answers."""
    assert_same(training_data(upgraded, "legacy"), training_data(json_only, "legacy"))
    for algorithm, params in (("logistic_regression", {}), ("random_forest", {"n_estimators": "8", "max_depth": "8"})):
        first = upgraded.training.train(command("legacy", algorithm, **params)).model
        second = json_only.training.train(command("legacy", algorithm, **params)).model
        assert first.record.metrics == second.record.metrics
        assert first.record.training_rows == second.record.training_rows == len(matrix)
        assert first.record.self_check == second.record.self_check
        probe = matrix[::97]
        assert np.array_equal(first.pipeline.predict_proba(probe), second.pipeline.predict_proba(probe))


@pytest.mark.slow
def test_100k_phase4_rows_are_upgraded_in_place_and_train_as_from_json(tmp_path: Path) -> None:
    matrix, targets = legacy_rows(100_000)
    documents = [(json.dumps(f), json.dumps(t)) for f, t in zip(matrix.tolist(), targets, strict=True)]
    (tmp_path / "upgraded").mkdir()
    (tmp_path / "json").mkdir()
    phase4_database(tmp_path / "upgraded" / "train.db", {"legacy": documents})
    shutil.copy(tmp_path / "upgraded" / "train.db", tmp_path / "json" / "train.db")
    upgraded = services_on(tmp_path / "upgraded")
    assert segment_sizes(upgraded, "legacy") == [13107] * 7 + [8251]
    json_only = services_on(tmp_path / "json")
    drop_binary_copy(json_only)
    train_both_ways(upgraded, json_only, matrix)


@pytest.fixture
def two_registries(postgres_cluster: Any) -> Iterator[tuple[str, str]]:
    urls = (postgres_cluster.create_database(), postgres_cluster.create_database())
    yield urls
    for url in urls:
        postgres_cluster.drop_database(url)


@pytest.mark.slow
def test_100k_phase4_rows_are_upgraded_in_place_on_postgresql(tmp_path: Path, two_registries: tuple[str, str]) -> None:
    matrix, targets = legacy_rows(100_000)
    documents = [("legacy", json.dumps(f), json.dumps(t)) for f, t in zip(matrix.tolist(), targets, strict=True)]
    for url in two_registries:
        with psycopg.connect(url) as conn:
            conn.execute((FIXTURES / "phase4_schema_postgresql.sql").read_text().encode())
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO data_history (dataset, features, target) VALUES (%s, %s, %s)", documents
                )
    (tmp_path / "upgraded").mkdir()
    (tmp_path / "json").mkdir()
    upgraded = services_on(tmp_path / "upgraded", two_registries[0])
    json_only = services_on(tmp_path / "json", two_registries[1])
    try:
        assert segment_sizes(upgraded, "legacy") == [13107] * 7 + [8251]
        drop_binary_copy(json_only)
        train_both_ways(upgraded, json_only, matrix)
    finally:
        upgraded.database.close()
        json_only.database.close()
