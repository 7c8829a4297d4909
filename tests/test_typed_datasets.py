"""Typed datasets (issue 23, item 1): a CSV of numbers, strings, booleans and empty cells ingested by the CLI into
a real server; the schema its first ingest fixes, and the batch that does not fit it refused by row, column and
value; `predserve datasets`; and HistoryRepository.load_table giving back exactly what was ingested, from the
Arrow segments and from the JSON rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from predserve.client.calls import LIST_DATASETS
from predserve.client.csvfile import CsvFile
from predserve.client.typed_csv import TypedCsvFile, typed_source
from predserve.protos import predserve_pb2 as pb
from predserve.server.domain import Column, ColumnType, Schema
from predserve.server.storage.databases import RegistryDatabase, open_database
from predserve.server.storage.history import HistoryRepository
from tests.support import ServerProcess, cli, cli_json
from tests.test_query_plans import migrated

CHURN = """age,plan,income,active,zip,churned
30,pro,5200.5,true,01234,1
41,basic,,false,94103,0
,pro,3100,TRUE,,1
25,,4100,false,10001,0
"""
# What load_table must give back for CHURN, with zip declared a string (it keeps its leading zero).
AGES = [30.0, 41.0, math.nan, 25.0]
PLANS = ["pro", "basic", "pro", None]
INCOMES = [5200.5, math.nan, 3100.0, 4100.0]
ACTIVE = [1.0, 0.0, 1.0, 0.0]
ZIPS = ["01234", "94103", None, "10001"]
TARGETS = [1, 0, 1, 0]
SCHEMA = Schema(
    (
        Column("age", ColumnType.NUMBER),
        Column("plan", ColumnType.STRING),
        Column("income", ColumnType.NUMBER),
        Column("active", ColumnType.NUMBER),
        Column("zip", ColumnType.STRING),
    )
)


def same_values(got: list[Any], expected: list[Any]) -> bool:
    return len(got) == len(expected) and all(
        (isinstance(e, float) and math.isnan(e) and isinstance(g, float) and math.isnan(g)) or g == e
        for g, e in zip(got, expected, strict=True)
    )


def assert_churn(table: Any) -> None:
    assert table.schema == SCHEMA
    frame = table.frame
    assert list(frame.columns) == list(SCHEMA.names)
    assert [str(t) for t in frame.dtypes] == ["float64", "object", "float64", "float64", "object"]
    assert same_values(frame["age"].tolist(), AGES)
    # a missing text cell is NaN, as pandas.read_csv gives it and SimpleImputer takes it (None would be a category)
    assert same_values(frame["plan"].tolist(), [math.nan if p is None else p for p in PLANS])
    assert same_values(frame["income"].tolist(), INCOMES)
    assert frame["active"].tolist() == ACTIVE
    assert same_values(frame["zip"].tolist(), [math.nan if z is None else z for z in ZIPS])
    assert table.targets == TARGETS and all(type(t) is int for t in table.targets)


def test_a_mixed_csv_through_the_cli_fixes_the_schema_and_reads_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "churn.csv"
    path.write_text(CHURN)
    server = ServerProcess(tmp_path).start()
    try:
        ingested = cli_json(
            server, "ingest", "--dataset", "churn", "--csv", str(path), "--target-column", "churned",
            "--column-type", "zip=string",
        )  # fmt: skip
        assert (ingested["rows_added"], ingested["total_rows"]) == (4, 4)

        listed = cli_json(server, "datasets")["datasets"]
        assert listed == [
            {
                "name": "churn",
                "rows": 4,
                "target_type": "integer",
                "columns": [
                    {"name": "age", "type": "number", "missing": 1},
                    {"name": "plan", "type": "string", "missing": 1},
                    {"name": "income", "type": "number", "missing": 1},
                    {"name": "active", "type": "number", "missing": 0},
                    {"name": "zip", "type": "string", "missing": 1},
                ],
            }
        ]
        shown = cli(server, "datasets")
        assert shown.returncode == 0, shown.stderr
        assert "churn" in shown.stdout and "plan: string (1 missing)" in shown.stdout
        assert "active: number," in shown.stdout  # no missing value, no count

        # A later batch must fit: the same columns, by name in any order; text in a number column is refused.
        later = tmp_path / "later.csv"
        later.write_text("plan,churned,age,income,active,zip\nbasic,0,52,1,false,02139\npro,1,old,2,true,1\n")
        refused = cli(server, "ingest", "--dataset", "churn", "--csv", str(later), "--target-column", "churned")
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1] == (  # after the progress bar
            "predserve: INVALID_ARGUMENT: row 1, column 'age': 'old' is not a number, and the column is a number "
            "column (fixed by the dataset's first ingest)"
        )
        later.write_text("plan,churned,age,income,active,zip\nbasic,0,52,1,false,02139\n")
        fits = cli_json(
            server, "ingest", "--dataset", "churn", "--csv", str(later), "--target-column", "churned",
            "--column-type", "zip=string",
        )  # fmt: skip
        assert fits["total_rows"] == 5
        # Without the declaration, zip reads as a number: the string column refuses it by row, column, value.
        later.write_text("plan,churned,age,income,active,zip\nbasic,0,53,1,false,2139\n")
        refused = cli(server, "ingest", "--dataset", "churn", "--csv", str(later), "--target-column", "churned")
        assert "row 0, column 'zip': the number 2139 in a string column" in refused.stderr
        # A declaration against the fixed types is refused too.
        refused = cli(
            server, "ingest", "--dataset", "churn", "--csv", str(later), "--target-column", "churned",
            "--column-type", "age=string",
        )  # fmt: skip
        assert "column_types gives 'age' as string, but the dataset's first ingest fixed it as number" in (
            refused.stderr
        )

        # Running the same command again resumes the finished ingest: nothing is stored twice.
        again = cli_json(
            server, "ingest", "--dataset", "churn", "--csv", str(path), "--target-column", "churned",
            "--column-type", "zip=string",
        )  # fmt: skip
        assert (again["rows_added"], again["total_rows"], again["already_stored"]) == (0, 5, True)
    finally:
        server.kill()

    database = open_database(server.db)
    try:
        table = HistoryRepository(database).load_table("churn")
        assert table is not None
        zips = [math.nan if z is None else z for z in [*ZIPS, "02139"]]
        assert same_values(table.frame["zip"].tolist(), zips) and table.targets == [*TARGETS, 0]
    finally:
        database.close()


def test_the_client_library_ingests_dicts_and_a_data_frame(server: ServerProcess) -> None:
    pandas = pytest.importorskip("pandas")
    records = [
        {"age": a, "plan": p, "income": i, "active": bool(x), "zip": z, "churned": t}
        for a, p, i, x, z, t in zip(AGES, PLANS, INCOMES, ACTIVE, ZIPS, TARGETS, strict=True)
    ]
    with server.client() as client:
        answer = client.ingest_table("dicts", records, "churned", batch_size=3)
        assert (answer.rows_added, answer.total_rows) == (4, 4)
        frame = pandas.DataFrame(records)
        assert client.ingest_table("frame", frame, "churned").total_rows == 4
        info = {d.name: d for d in client.list_datasets().datasets}
        for name in ("dicts", "frame"):
            assert [(c.name, c.type, c.missing) for c in info[name].columns] == [
                ("age", pb.NUMBER, 1),
                ("plan", pb.STRING, 1),
                ("income", pb.NUMBER, 1),
                ("active", pb.NUMBER, 0),
                ("zip", pb.STRING, 1),
            ]
        with pytest.raises(Exception) as refused:
            client.ingest_table("dicts", [{**records[0], "plan": 7}], "churned")
        assert "row 0, column 'plan': the number 7 in a string column" in str(refused.value)
    database = open_database(server.db)
    try:
        for name in ("dicts", "frame"):
            table = HistoryRepository(database).load_table(name)
            assert table is not None
            assert_churn(table)
    finally:
        database.close()


def test_list_datasets_needs_the_predict_token(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path, env={"PREDSERVE_ADMIN_TOKEN": "a" * 32, "PREDSERVE_PREDICT_TOKEN": "p" * 32}
    ).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            call = LIST_DATASETS.multicallable(channel)
            with pytest.raises(grpc.RpcError) as refused:
                call(pb.ListDatasetsRequest(), timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            answer = call(pb.ListDatasetsRequest(), timeout=10, metadata=[("authorization", "Bearer " + "p" * 32)])
            assert list(answer.datasets) == []
    finally:
        server.kill()


def ingest_churn(database: RegistryDatabase, tmp_path: Path, batch_rows: int = 2) -> HistoryRepository:
    """CHURN in batches through the service, as the server stores it."""
    from predserve.server.api import converters
    from predserve.server.services.history import HistoryService

    path = tmp_path / "churn.csv"
    path.write_text(CHURN)
    source = typed_source(path, "churned", {"zip": "string"})
    assert isinstance(source, TypedCsvFile)
    history = HistoryRepository(database)
    service = HistoryService(history)
    first_row = 0
    for number, batch in enumerate(source.batches(batch_rows)):
        header = pb.IngestHistoryRequest(
            dataset="churn", ingest_id="i", batch_number=number, first_row=first_row, target_column="churned"
        )
        header.column_types.add(name="zip", type=pb.STRING)
        service.ingest_upload(converters.ingest_upload(iter(batch.messages(header)), None))
        first_row += batch.row_count
    return history


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_load_table_gives_back_what_was_ingested_from_segments_and_from_json_rows(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    location = tmp_path / "typed.db" if where == "sqlite" else request.getfixturevalue("postgres_url")
    database = migrated(location)
    try:
        history = ingest_churn(database, tmp_path)
        with database.reading() as conn:
            formats = conn.execute("SELECT DISTINCT features_format FROM data_segments").fetchall()
            documents = [row[0] for row in conn.execute("SELECT features FROM data_history ORDER BY id").fetchall()]
        assert [row[0] for row in formats] == ["arrow"]
        assert [json.loads(d) for d in documents] == [
            [30.0, "pro", 5200.5, 1.0, "01234"],
            [41.0, "basic", None, 0.0, "94103"],
            [None, "pro", 3100.0, 1.0, None],
            [25.0, None, 4100.0, 0.0, "10001"],
        ]
        from_segments = history.load_table("churn")
        assert from_segments is not None
        assert_churn(from_segments)
        with database.writing() as conn:
            conn.execute("DELETE FROM data_segments WHERE dataset = ?", ("churn",))
        from_json = history.load_table("churn")
        assert from_json is not None
        assert_churn(from_json)
        assert history.load_columns("churn") is None  # no float64 matrix holds strings
    finally:
        database.close()


def test_numbers_only_datasets_stay_as_they_were_and_read_as_tables(tmp_path: Path) -> None:
    database = migrated(tmp_path / "numbers.db")
    try:
        history = HistoryRepository(database)
        matrix = np.array([[1.0, 2.0], [3.0, 4.5]])
        history.append("n", ["a", "b"], matrix, [0, 1])
        assert not history.is_typed("n")
        table = history.load_table("n")
        assert table is not None and table.schema == Schema.numbers(["a", "b"])
        assert table.frame.to_numpy().tolist() == matrix.tolist() and table.targets == [0, 1]
        # An all-number CSV with no empty cell goes by the numbers path, and its dataset stays numbers-only.
        path = tmp_path / "plain.csv"
        path.write_text("a,b,y\n1,2,0\n3,4.5,1\n")
        assert isinstance(typed_source(path, "y", {}), CsvFile)
        path.write_text("a,b,y\n1,,0\n3,4.5,1\n")
        assert isinstance(typed_source(path, "y", {}), TypedCsvFile)
        with database.reading() as conn:
            assert conn.execute("SELECT column_types FROM datasets WHERE name = 'n'").fetchone()[0] is None
        assert [(s.name, s.rows, s.target_type) for s in history.datasets()] == [("n", 2, "integer")]
    finally:
        database.close()
