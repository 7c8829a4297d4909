"""ListPredictionSets a page at a time (AIP-158): newest first, every set exactly once while new ones arrive,
filters, default and maximum page sizes, and tokens that only continue the listing they came from. On real
SQLite and PostgreSQL registries in process, and through gRPC against a real server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from predserve.server.errors import InvalidArgument
from predserve.server.model_store import ModelStore
from predserve.server.services.registry import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ModelRegistryService, SetFilter
from predserve.server.settings import MIGRATIONS_DIR
from predserve.server.storage.databases import RegistryDatabase, open_database
from predserve.server.storage.migrations import MigrationRunner, migrations_for
from predserve.server.storage.repositories import PredictionSetRepository
from tests.support import ServerProcess

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def migrated(location: str | Path) -> RegistryDatabase:
    database = open_database(location)
    database.prepare()
    MigrationRunner(database).apply(migrations_for(database, MIGRATIONS_DIR))
    return database


def add_sets(
    database: RegistryDatabase, model_type: str, count: int, first_hour: int = 0, archived_every: int = 0
) -> None:
    """`count` sets recorded an hour apart, the newest current; every `archived_every`-th one archived."""
    rows = []
    for index in range(count):
        created = database.timestamp_parameter(START + dt.timedelta(hours=first_hour + index))
        archived = created if archived_every and index % archived_every == 0 else None
        rows.append((model_type, "d", created, False, archived, f"{model_type}-{first_hour + index}.joblib"))
    with database.writing() as conn:
        conn.execute("UPDATE prediction_sets SET is_current = FALSE WHERE model_type = ?", (model_type,))
        conn.executemany(
            "INSERT INTO prediction_sets (model_type, dataset, created_at, is_current, archived_at, "
            "model_artifact_path) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute(
            "UPDATE prediction_sets SET is_current = TRUE WHERE id = (SELECT MAX(id) FROM prediction_sets "
            "WHERE model_type = ? AND archived_at IS NULL)",
            (model_type,),
        )


def every_page(registry: ModelRegistryService, model_type: str, size: int, only: SetFilter | None = None) -> list[int]:
    ids: list[int] = []
    token = ""
    while True:
        page = registry.list_prediction_sets(model_type, size, token, only)
        assert len(page.sets) <= size
        ids += [record.id for record in page.sets]
        token = page.next_page_token
        if not token:
            return ids


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Iterator[RegistryDatabase]:
    database = migrated(tmp_path / "paging.db")
    yield database
    database.close()


@pytest.fixture
def postgres_registry(postgres_url: str) -> Iterator[RegistryDatabase]:
    database = migrated(postgres_url)
    yield database
    database.close()


def check_pages_hold_every_set_once_newest_first(database: RegistryDatabase) -> None:
    add_sets(database, "a", 23)
    add_sets(database, "b", 5)
    registry = ModelRegistryService(ModelStore(), PredictionSetRepository(database))
    newest_first = [r.id for r in PredictionSetRepository(database).for_model_type("a")]
    assert len(newest_first) == 23
    for size in (1, 5, 22, 23, 24):
        assert every_page(registry, "a", size) == newest_first
    last = registry.list_prediction_sets("a", 23)
    assert [r.id for r in last.sets] == newest_first and last.next_page_token == ""


def test_pages_hold_every_set_once_newest_first(sqlite_registry: RegistryDatabase) -> None:
    check_pages_hold_every_set_once_newest_first(sqlite_registry)


def test_pages_hold_every_set_once_newest_first_on_postgresql(postgres_registry: RegistryDatabase) -> None:
    check_pages_hold_every_set_once_newest_first(postgres_registry)


def check_pages_are_stable_while_new_sets_arrive(database: RegistryDatabase) -> None:
    add_sets(database, "a", 12)
    registry = ModelRegistryService(ModelStore(), PredictionSetRepository(database))
    before = [r.id for r in PredictionSetRepository(database).for_model_type("a")]
    first = registry.list_prediction_sets("a", 5)
    add_sets(database, "a", 7, first_hour=100)  # recorded between two pages
    ids = [r.id for r in first.sets]
    token = first.next_page_token
    while token:
        page = registry.list_prediction_sets("a", 5, token)
        ids += [r.id for r in page.sets]
        token = page.next_page_token
    assert ids == before  # nothing repeated, nothing skipped, the new sets are on a new first page
    assert len(every_page(registry, "a", 5)) == 19


def test_pages_are_stable_while_new_sets_arrive(sqlite_registry: RegistryDatabase) -> None:
    check_pages_are_stable_while_new_sets_arrive(sqlite_registry)


def test_pages_are_stable_while_new_sets_arrive_on_postgresql(postgres_registry: RegistryDatabase) -> None:
    check_pages_are_stable_while_new_sets_arrive(postgres_registry)


def check_filters(database: RegistryDatabase) -> None:
    add_sets(database, "a", 30, archived_every=3)  # hours 0..29; 0, 3, ..., 27 archived
    registry = ModelRegistryService(ModelStore(), PredictionSetRepository(database))
    records = PredictionSetRepository(database).for_model_type("a")
    by_hour = {int(r.artifact.relative_path.split("-")[1].split(".")[0]): r for r in records if r.artifact}

    current = every_page(registry, "a", 4, SetFilter(current_only=True))
    assert current == [by_hour[29].id] and by_hour[29].is_current

    unarchived = every_page(registry, "a", 4, SetFilter(exclude_archived=True))
    assert unarchived == [by_hour[h].id for h in range(29, -1, -1) if h % 3]

    # Strictly after: the set created at exactly hour 20 is not among them.
    after = SetFilter(created_after=START + dt.timedelta(hours=20))
    assert every_page(registry, "a", 4, after) == [by_hour[h].id for h in range(29, 20, -1)]
    just_before = SetFilter(created_after=START + dt.timedelta(hours=20) - dt.timedelta(microseconds=1))
    assert every_page(registry, "a", 4, just_before)[-1] == by_hour[20].id

    both = SetFilter(exclude_archived=True, created_after=START + dt.timedelta(hours=20))
    assert every_page(registry, "a", 2, both) == [by_hour[h].id for h in range(29, 20, -1) if h % 3]
    assert every_page(registry, "a", 2, SetFilter(True, True, START + dt.timedelta(hours=40))) == []
    assert every_page(registry, "nothing_here", 2) == []


def test_filters(sqlite_registry: RegistryDatabase) -> None:
    check_filters(sqlite_registry)


def test_filters_on_postgresql(postgres_registry: RegistryDatabase) -> None:
    check_filters(postgres_registry)


def test_default_and_maximum_page_sizes(sqlite_registry: RegistryDatabase) -> None:
    add_sets(sqlite_registry, "a", MAX_PAGE_SIZE + 5)
    registry = ModelRegistryService(ModelStore(), PredictionSetRepository(sqlite_registry))
    assert len(registry.list_prediction_sets("a").sets) == DEFAULT_PAGE_SIZE == 50
    clamped = registry.list_prediction_sets("a", MAX_PAGE_SIZE * 10)
    assert len(clamped.sets) == MAX_PAGE_SIZE == 1000
    rest = registry.list_prediction_sets("a", MAX_PAGE_SIZE, clamped.next_page_token)
    assert len(rest.sets) == 5 and rest.next_page_token == ""
    with pytest.raises(InvalidArgument, match="^page_size -1 is negative: send 0 for the default of 50, or up to 1000"):
        registry.list_prediction_sets("a", -1)


def test_a_token_continues_only_the_listing_it_came_from(sqlite_registry: RegistryDatabase) -> None:
    add_sets(sqlite_registry, "a", 10)
    add_sets(sqlite_registry, "b", 10)
    registry = ModelRegistryService(ModelStore(), PredictionSetRepository(sqlite_registry))
    token = registry.list_prediction_sets("a", 3, only=SetFilter(exclude_archived=True)).next_page_token
    assert token
    # The same listing, even with another page size, goes on.
    assert len(registry.list_prediction_sets("a", 4, token, SetFilter(exclude_archived=True)).sets) == 4
    other = "page_token continues a listing of another model_type or other filters"
    for model_type, only in [
        ("a", SetFilter()),
        ("a", SetFilter(exclude_archived=True, current_only=True)),
        ("a", SetFilter(exclude_archived=True, created_after=START)),
        ("b", SetFilter(exclude_archived=True)),
    ]:
        with pytest.raises(InvalidArgument, match=other):
            registry.list_prediction_sets(model_type, 3, token, only)
    for garbage in ("x", "not a token", token[:-3], "MTo5OTk5OTk5OTk6YWJj", "!!!!"):
        with pytest.raises(InvalidArgument, match="^page_token "):
            registry.list_prediction_sets("a", 3, garbage, SetFilter(exclude_archived=True))


def test_a_token_of_another_registry_is_refused(tmp_path: Path, sqlite_registry: RegistryDatabase) -> None:
    add_sets(sqlite_registry, "a", 3)
    elsewhere = migrated(tmp_path / "elsewhere.db")
    add_sets(elsewhere, "a", 40)
    token = ModelRegistryService(ModelStore(), PredictionSetRepository(elsewhere)).list_prediction_sets("a", 2)
    elsewhere.close()
    registry = ModelRegistryService(ModelStore(), PredictionSetRepository(sqlite_registry))
    with pytest.raises(InvalidArgument, match="^page_token names no prediction set of this registry"):
        registry.list_prediction_sets("a", 2, token.next_page_token)


def test_through_grpc_old_clients_get_the_first_page_and_errors_name_the_field(tmp_path: Path) -> None:
    database = migrated(tmp_path / "predictions.db")
    add_sets(database, "a", 120, archived_every=2)
    database.close()
    (tmp_path / "models").mkdir(mode=0o700)
    server = ServerProcess(tmp_path, db=tmp_path / "predictions.db").start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.PredserveStub(channel)
            old = stub.ListPredictionSets(pb.ListPredictionSetsRequest(model_type="a"))
            assert len(old.prediction_sets) == DEFAULT_PAGE_SIZE and old.next_page_token
            assert old.prediction_sets[0].is_current and old.prediction_sets[0].created_at == "2026-01-05T23:00:00.000Z"

            ids, token = [], ""
            while True:
                request = pb.ListPredictionSetsRequest(model_type="a", page_size=7, page_token=token)
                page = stub.ListPredictionSets(request)
                ids += [s.id for s in page.prediction_sets]
                token = page.next_page_token
                if not token:
                    break
            assert ids == sorted(ids, reverse=True) and len(set(ids)) == 120

            request = pb.ListPredictionSetsRequest(model_type="a", exclude_archived=True, page_size=1000)
            request.created_after.FromJsonString("2026-01-05T12:00:00Z")  # after hour 108: 109..119, odd ones
            filtered = stub.ListPredictionSets(request)
            assert [s.created_at[11:13] for s in filtered.prediction_sets] == ["23", "21", "19", "17", "15", "13"]
            assert all(not s.archived_at for s in filtered.prediction_sets) and filtered.next_page_token == ""
            current = stub.ListPredictionSets(pb.ListPredictionSetsRequest(model_type="a", current_only=True))
            assert [s.id for s in current.prediction_sets] == [ids[0]]

            for request, details in [
                (pb.ListPredictionSetsRequest(model_type="a", page_size=-5), "page_size -5 is negative"),
                (pb.ListPredictionSetsRequest(model_type="a", page_token="garbage"), "page_token is not one"),
                (
                    pb.ListPredictionSetsRequest(model_type="a", current_only=True, page_token=old.next_page_token),
                    "page_token continues a listing of another model_type or other filters",
                ),
            ]:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ListPredictionSets(request)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert caught.value.details().startswith(details)
    finally:
        server.kill()
