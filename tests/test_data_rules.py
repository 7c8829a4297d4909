"""Data rules (issue 12, item 7): a dataset's first rows fix its feature names, and hyper-parameters are finite.

In process, on a migrated SQLite file and on PostgreSQL: a refused ingest stores nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from predserve.server.app import build_services
from predserve.server.domain import HistoryRow
from predserve.server.errors import InvalidArgument
from predserve.server.services.catalog import find_recipe, parse_params
from predserve.server.services.history import HistoryService
from predserve.server.services.training import TrainCommand
from predserve.server.settings import MIGRATIONS_DIR, ServerConfig
from predserve.server.storage.databases import RegistryDatabase, open_database
from predserve.server.storage.history import HistoryRepository
from predserve.server.storage.migrations import MigrationRunner, migrations_for
from tests.support import iris_rows

ROWS = [HistoryRow((1.0, 2.0), 0), HistoryRow((3.0, 4.0), 1)]


def migrated(location: str | Path) -> RegistryDatabase:
    database = open_database(location)
    database.prepare(check_integrity=False)
    MigrationRunner(database).apply(migrations_for(database, MIGRATIONS_DIR))
    return database


@pytest.fixture
def history(tmp_path: Path) -> HistoryService:
    return HistoryService(HistoryRepository(migrated(tmp_path / "rules.db")))


@pytest.fixture
def postgres_history(postgres_url: str) -> Iterator[HistoryService]:
    database = migrated(postgres_url)
    yield HistoryService(HistoryRepository(database))
    database.close()


def size(history: HistoryService, dataset: str) -> int:
    loaded = history.history.load(dataset)
    return 0 if loaded is None else len(loaded.targets)


def check_names_are_fixed_by_the_first_rows(history: HistoryService) -> None:
    assert history.ingest("d", ["a", "b"], ROWS) == 2
    assert history.ingest("d", ["a", "b"], ROWS) == 4  # the same names again
    assert history.ingest("d", [], ROWS) == 6  # or none
    with pytest.raises(InvalidArgument, match=r"dataset 'd' has the feature names \['a', 'b'\], fixed by its first"):
        history.ingest("d", ["b", "a"], ROWS)
    with pytest.raises(InvalidArgument, match=r"these rows give \['x', 'y'\]"):
        history.ingest("d", ["x", "y"], ROWS)
    assert size(history, "d") == 6
    loaded = history.history.load("d")
    assert loaded is not None and loaded.feature_names == ("a", "b")


def test_a_datasets_first_rows_fix_its_feature_names(history: HistoryService) -> None:
    check_names_are_fixed_by_the_first_rows(history)


def test_a_datasets_first_rows_fix_its_feature_names_on_postgresql(postgres_history: HistoryService) -> None:
    check_names_are_fixed_by_the_first_rows(postgres_history)


def test_names_cannot_be_given_to_a_dataset_whose_first_rows_had_none(history: HistoryService) -> None:
    history.ingest("unnamed", [], ROWS)
    with pytest.raises(InvalidArgument, match="dataset 'unnamed' has no feature names: its first rows gave none"):
        history.ingest("unnamed", ["a", "b"], ROWS)
    assert size(history, "unnamed") == 2
    assert history.ingest("unnamed", [], ROWS) == 4


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", "a"], "feature names must be unique: 'a' repeated"),
        (["a", ""], "feature name 1 is empty"),
        ([" ", "b"], "feature name 0 is empty"),
    ],
)
def test_duplicate_or_empty_feature_names_are_refused(history: HistoryService, names: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        history.ingest("bad_names", names, ROWS)
    assert size(history, "bad_names") == 0
    history.ingest("bad_names", ["a", "b"], ROWS)  # the refused ingest fixed nothing


def test_concurrent_first_ingests_with_other_names_fix_one_set_of_names(postgres_history: HistoryService) -> None:
    """Separate connections race to be the first rows: the primary key keeps one, the other is refused."""
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def ingest(index: int) -> None:
        start.wait()
        try:
            postgres_history.ingest("raced", [f"a{index}", f"b{index}"], ROWS)
            outcomes.append("stored")
        except InvalidArgument:
            outcomes.append("refused")

    threads = [threading.Thread(target=ingest, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["stored"]
    assert size(postgres_history, "raced") == 2


@pytest.mark.parametrize("text", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_non_finite_hyper_parameters_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"parameter C = '{text}' is not a finite number"):
        parse_params(find_recipe("logistic_regression"), {"C": text})


def test_finite_hyper_parameters_are_still_typed() -> None:
    assert parse_params(find_recipe("logistic_regression"), {"C": "1e3", "max_iter": "50"}) == {
        "C": 1000.0,
        "max_iter": 50,
    }


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", "a", "b", "c"], r"feature names must be unique: 'a' repeated"),
        (["a", " ", "b", "c"], "feature name 1 is empty"),
    ],
)
def test_inline_train_rows_name_their_features_once_each(tmp_path: Path, names: list[str], message: str) -> None:
    services = build_services(ServerConfig(db_path=tmp_path / "inline.db", models_dir=tmp_path / "models"))
    rows = [HistoryRow(tuple(features), target) for features, target in iris_rows()[1]]
    command = TrainCommand(model_type="m", algorithm="logistic_regression", rows=rows, feature_names=names)
    with pytest.raises(InvalidArgument, match=message):
        services.training.train(command)
    assert services.sets.is_empty()
