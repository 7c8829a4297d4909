"""Every statement of the calls that must not grow with history, and its plan (EXPLAIN QUERY PLAN on SQLite,
EXPLAIN on PostgreSQL): the listing of sets a page at a time, the current-set lookups, the registrar's lookups,
garbage collection, the start-up checks and fallback, the orphan check, V2 versions, an ingest's batch and where
the ingest resumes, and the data Train reads.
Each statement is recorded as the real repositories run it on a real registry holding a long history, then
explained with its parameters. tests/test_bounded_lookups.py runs the services themselves and checks what they ran.

SQLite chooses plans by rule (no ANALYZE runs in the field), so its plans are stated exactly. PostgreSQL
chooses by cost: its registry is ANALYZEd, as autovacuum would, and no statement may read a table through
a sequential scan, with the index each one uses stated."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from predserve.server.model_store import ModelStore
from predserve.server.services.registry import ModelRegistryService, SetFilter
from predserve.server.settings import MIGRATIONS_DIR
from predserve.server.storage.databases import RegistryDatabase, open_database
from predserve.server.storage.history import HistoryRepository
from predserve.server.storage.ingests import IngestBatch, IngestRepository
from predserve.server.storage.migrations import MigrationRunner, migrations_for
from predserve.server.storage.repositories import PredictionSetRepository
from tests.test_postgres_registry import new_set

TYPES = 20
SETS_PER_TYPE = 500  # 10,000 sets, nearly all archived, as after a long life with retention
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
HISTORY_ROWS = 20_000
INGESTS = 200
TABLES = ("prediction_sets", "promotions", "data_history", "data_segments", "datasets", "ingest_batches")


class Recorder:
    """A connection that runs every statement and records it with its (first) parameters."""

    def __init__(self, conn: Any, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.conn = conn
        self.statements = statements

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        self.statements.append((sql, tuple(parameters)))
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any) -> Any:
        rows = [tuple(p) for p in parameters]
        self.statements.append((sql, rows[0] if rows else ()))
        return self.conn.executemany(sql, rows)


class RecordingDatabase:
    """The real registry, with every connection it lends recorded."""

    def __init__(self, database: RegistryDatabase) -> None:
        self.database = database
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.database, name)

    def _recorded(self, lend: Callable[[], Any]) -> Any:
        @contextmanager
        def lent() -> Iterator[Recorder]:
            with lend() as conn:
                yield Recorder(conn, self.statements)

        return lent()

    def reading(self) -> Any:
        return self._recorded(self.database.reading)

    def writing(self, commit_by: float | None = None) -> Any:
        return self._recorded(lambda: self.database.writing(commit_by))

    def changing_sets(self, commit_by: float | None = None) -> Any:
        return self._recorded(lambda: self.database.changing_sets(commit_by))

    def snapshot(self) -> Any:
        return self._recorded(self.database.snapshot)


def long_history(database: RegistryDatabase) -> None:
    """TYPES model types of SETS_PER_TYPE sets an hour apart, all but the newest 3 archived, the newest current,
    a promotion per set; two datasets of HISTORY_ROWS rows ingested in batches, with their binary copies."""
    sets = []
    for t in range(TYPES):
        for i in range(SETS_PER_TYPE):
            created = database.timestamp_parameter(START + dt.timedelta(hours=i, minutes=t))
            archived = created if i < SETS_PER_TYPE - 3 else None
            sets.append((f"t{t}", "d0", created, i == SETS_PER_TYPE - 1, archived, f"t{t}-{i}.joblib"))
    with database.writing() as conn:
        conn.executemany(
            "INSERT INTO prediction_sets (model_type, dataset, created_at, is_current, archived_at, "
            "model_artifact_path) VALUES (?, ?, ?, ?, ?, ?)",
            sets,
        )
        conn.execute(
            "INSERT INTO promotions (model_type, prediction_set_id, reason) "
            "SELECT model_type, id, 'train' FROM prediction_sets"
        )
    history = HistoryRepository(database)
    rng = np.random.default_rng(3)
    for dataset in ("d0", "d1"):
        for _ in range(4):
            matrix = rng.normal(size=(HISTORY_ROWS // 4, 10))
            history.append(dataset, [f"x{i}" for i in range(10)], matrix, [int(v > 0) for v in matrix[:, 0]])
    with database.writing() as conn:  # INGESTS records of 50 batches of 10 rows, but ingest i-1 stopped at 40
        conn.executemany(
            "INSERT INTO ingest_batches (ingest_id, batch_number, dataset, first_row, row_count, content_sha256) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(f"i-{i}", n, "d0", 10 * n, 10, "0" * 64) for i in range(INGESTS) for n in range(40 if i == 1 else 50)],
        )


# What each call does, on the recording registry. Each returns nothing; what it runs is what counts.
def calls(database: RecordingDatabase) -> dict[str, Callable[[], object]]:
    sets = PredictionSetRepository(database)  # type: ignore[arg-type]
    history = HistoryRepository(database)  # type: ignore[arg-type]
    registry = ModelRegistryService(ModelStore(), sets)
    token = registry.list_prediction_sets("t3", 50).next_page_token
    archived_token = registry.list_prediction_sets("t3", 1, only=SetFilter(exclude_archived=True)).next_page_token
    after = SetFilter(created_after=START + dt.timedelta(hours=SETS_PER_TYPE - 100))
    current = sets.current("t3")
    assert current is not None
    row = np.arange(10, dtype=np.float64).reshape(1, 10)
    return {
        "list: first page": lambda: registry.list_prediction_sets("t3", 50),
        "list: next page": lambda: registry.list_prediction_sets("t3", 50, token),
        "list: current only": lambda: registry.list_prediction_sets("t3", 50, only=SetFilter(current_only=True)),
        "list: not archived, next page": lambda: registry.list_prediction_sets(
            "t3", 1, archived_token, SetFilter(exclude_archived=True)
        ),
        "list: created after": lambda: registry.list_prediction_sets("t3", 50, only=after),
        "current lookup": lambda: sets.current("t3"),
        "current of every type": lambda: (sets.current_ids(), sets.current_sets()),
        "registrar: record and promote": lambda: sets.insert(new_set("t3", "new.joblib"), promote_if=lambda c: True),
        "registrar: promote": lambda: sets.promote(5, "promote"),
        "registrar: after a failed Train": lambda: sets.records_artifact("t3-2.joblib"),
        "gc": lambda: (
            sets.model_types(),
            sets.current("t3"),
            sets.retained("t3", older_than=current.id, limit=4),
            sets.retained_beyond("t3", 1),
            sets.archive([7]),
        ),
        "rollback": lambda: (sets.previous_current("t3"), sets.has_model_type("t3")),
        "start-up": lambda: (sets.is_empty(), sets.model_types(), sets.current_sets()),
        # ModelLoader._fall_back, when the current set is refused: a few older sets per query
        "start-up fallback": lambda: sets.retained("t3", older_than=current.id, limit=4),
        # _report_orphans at start-up, and ArtifactRecoveryService.orphans
        "orphan check": lambda: sets.known_paths(["t3-499.joblib", "t4-7.joblib", "stray.joblib"]),
        "v2 versions": lambda: sets.recent_versions("t3", 100),
        "ingest": lambda: history.append("d0", [], row, [1]),
        # an ingest's batch (record_batch's checks in the appending transaction), then where the ingest resumes
        "ingest: a batch": lambda: history.append_batch("d0", [], row, [1], IngestBatch("i-1", 40, 400, 1, "0" * 64)),
        "ingest: resume": lambda: IngestRepository(database).progress("i-1"),  # type: ignore[arg-type]
        "train data": lambda: history.load_columns("d0"),
    }


def recorded(database: RegistryDatabase) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
    recording = RecordingDatabase(database)
    plans = {}
    for name, call in calls(recording).items():
        recording.statements.clear()
        call()
        plans[name] = list(recording.statements)
    return plans


def migrated(location: str | Path) -> RegistryDatabase:
    database = open_database(location)
    database.prepare()
    MigrationRunner(database).apply(migrations_for(database, MIGRATIONS_DIR))
    return database


def sqlite_plan(database: RegistryDatabase, sql: str, parameters: tuple[Any, ...]) -> list[str]:
    with database.reading() as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", parameters).fetchall()]


def postgres_plan(database: RegistryDatabase, sql: str, parameters: tuple[Any, ...]) -> list[tuple[str, str, str]]:
    """(node type, table, index) of every node that reads one of predserve's tables or indexes; a bitmap scan
    names its table, its index scan below it the index."""
    with database.reading() as conn:
        (document,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", parameters).fetchone()
    nodes: list[tuple[str, str, str]] = []

    def walk(node: dict[str, Any], table: str = "") -> None:
        table = node.get("Relation Name", table)
        if table in TABLES and node["Node Type"] != "ModifyTable" and ("Relation Name" in node or "Index Name" in node):
            nodes.append((node["Node Type"], table, node.get("Index Name", "")))
        for child in node.get("Plans", []):
            walk(child, table)

    walk((json.loads(document) if isinstance(document, str) else document)[0]["Plan"])
    return nodes


# model_types(): a loose scan of idx_prediction_sets_newest, one seek per model type (gc and start-up run it)
MODEL_TYPES_PLAN = [
    "CO-ROUTINE types",
    "SETUP",
    "SEARCH prediction_sets USING COVERING INDEX idx_prediction_sets_newest",
    "RECURSIVE STEP",
    "SCAN types",
    "CORRELATED SCALAR SUBQUERY 2",
    "SEARCH prediction_sets USING COVERING INDEX idx_prediction_sets_newest (model_type>?)",
    "SCAN types",
]

# SQLite's plan of each call, statement after statement. Two SCANs are bounded: the partial index
# ux_prediction_sets_one_current holds one entry per model type (the current sets), and "SCAN types" walks
# the model types the loose index scan found.
SQLITE_PLANS = {
    "list: first page": ["SEARCH prediction_sets USING INDEX idx_prediction_sets_newest (model_type=?)"],
    "list: next page": [
        "SEARCH prediction_sets USING INTEGER PRIMARY KEY (rowid=?)",
        "SEARCH prediction_sets USING INDEX idx_prediction_sets_newest (model_type=? AND created_at<?)",
    ],
    "list: current only": [
        "SEARCH prediction_sets USING INTEGER PRIMARY KEY (rowid=?)",
        "SCALAR SUBQUERY 1",
        "SEARCH prediction_sets USING INDEX ux_prediction_sets_one_current (model_type=?)",
    ],
    "list: not archived, next page": [
        "SEARCH prediction_sets USING INTEGER PRIMARY KEY (rowid=?)",
        "SEARCH prediction_sets USING INDEX idx_prediction_sets_unarchived (model_type=? AND created_at<?)",
    ],
    "list: created after": [
        "SEARCH prediction_sets USING INDEX idx_prediction_sets_newest (model_type=? AND created_at>?)"
    ],
    "current lookup": ["SEARCH prediction_sets USING INDEX ux_prediction_sets_one_current (model_type=?)"],
    "current of every type": [
        "SCAN prediction_sets USING INDEX ux_prediction_sets_one_current",
        "SCAN prediction_sets USING INDEX ux_prediction_sets_one_current",
    ],
    "registrar: record and promote": [
        "SEARCH prediction_sets USING INDEX ux_prediction_sets_one_current (model_type=?)",
        "SEARCH promotions USING COVERING INDEX idx_promotions_set (prediction_set_id=?)",  # the foreign key's check
        "SEARCH prediction_sets USING INDEX ux_prediction_sets_one_current (model_type=?)",
        "SEARCH prediction_sets USING INTEGER PRIMARY KEY (rowid=?)",
    ],
    "registrar: promote": [
        "SEARCH prediction_sets USING INTEGER PRIMARY KEY (rowid=?)",
        "SEARCH prediction_sets USING INDEX ux_prediction_sets_one_current (model_type=?)",
        "SEARCH prediction_sets USING INTEGER PRIMARY KEY (rowid=?)",
    ],
    "registrar: after a failed Train": [
        "SEARCH prediction_sets USING COVERING INDEX idx_prediction_sets_artifact (model_artifact_path=?)"
    ],
    "gc": [
        *MODEL_TYPES_PLAN,
        "SEARCH prediction_sets USING INDEX ux_prediction_sets_one_current (model_type=?)",
        # the sets that still have an artifact, sorted by id: what retention keeps, a few per type; read three
        # times: the fallback candidate's first page, the id `keep` sets down, the sets past it
        *[
            "SEARCH prediction_sets USING INDEX idx_prediction_sets_unarchived (model_type=?)",
            "USE TEMP B-TREE FOR ORDER BY",
        ]
        * 3,
        "SEARCH prediction_sets USING INTEGER PRIMARY KEY (rowid=?)",
    ],
    "rollback": [
        "SEARCH p USING INDEX idx_promotions_type (model_type=?)",
        "LIST SUBQUERY 1",
        "SEARCH prediction_sets USING INDEX ux_prediction_sets_one_current (model_type=?)",
        "SEARCH prediction_sets USING COVERING INDEX idx_prediction_sets_newest (model_type=?)",
    ],
    "start-up": [
        "SEARCH prediction_sets",  # MIN(id): the first key of the table
        *MODEL_TYPES_PLAN,
        "SCAN prediction_sets USING INDEX ux_prediction_sets_one_current",
    ],
    # sorted by id among the sets that still have an artifact, as gc's: what retention keeps, a few per type
    "start-up fallback": [
        "SEARCH prediction_sets USING INDEX idx_prediction_sets_unarchived (model_type=?)",
        "USE TEMP B-TREE FOR ORDER BY",
    ],
    "orphan check": [
        "SEARCH prediction_sets USING COVERING INDEX idx_prediction_sets_artifact (model_artifact_path=?)"
    ],
    "v2 versions": ["SEARCH prediction_sets USING INDEX idx_prediction_sets_unarchived (model_type=?)"],
    "ingest": [
        "SEARCH datasets USING INDEX sqlite_autoindex_datasets_1 (name=?)",
        "SEARCH data_history",  # MAX(id): the last key of the table
        "SEARCH data_history USING COVERING INDEX idx_data_history_dataset (dataset=? AND id>?)",
        "SEARCH data_segments USING INDEX ux_data_segments_rows (dataset=?)",
        "SEARCH data_history USING COVERING INDEX idx_data_history_dataset (dataset=?)",  # the dataset's size
    ],
    # the batch is not stored yet; the ingest's batch count and last batch; (the insert); no batch after it
    "ingest: a batch": [
        "SEARCH ingest_batches USING INDEX sqlite_autoindex_ingest_batches_1 (ingest_id=? AND batch_number=?)",
        "SEARCH ingest_batches USING COVERING INDEX sqlite_autoindex_ingest_batches_1 (ingest_id=?)",
        "SEARCH ingest_batches USING INDEX sqlite_autoindex_ingest_batches_1 (ingest_id=? AND batch_number=?)",
        "SEARCH ingest_batches USING INDEX sqlite_autoindex_ingest_batches_1 (ingest_id=? AND batch_number=?)",
        "SEARCH datasets USING INDEX sqlite_autoindex_datasets_1 (name=?)",
        "SEARCH data_history",  # MAX(id): the last key of the table
        "SEARCH data_history USING COVERING INDEX idx_data_history_dataset (dataset=? AND id>?)",
        "SEARCH data_segments USING INDEX ux_data_segments_rows (dataset=?)",
        "SEARCH data_segments USING INTEGER PRIMARY KEY (rowid=?)",  # added to the small last segment
        "SEARCH data_history USING COVERING INDEX idx_data_history_dataset (dataset=?)",  # the dataset's size
    ],
    "ingest: resume": [
        "SEARCH ingest_batches USING COVERING INDEX sqlite_autoindex_ingest_batches_1 (ingest_id=?)",
        "SEARCH ingest_batches USING INDEX sqlite_autoindex_ingest_batches_1 (ingest_id=? AND batch_number=?)",
    ],
    "train data": [
        "SEARCH data_history USING COVERING INDEX idx_data_history_dataset (dataset=?)",
        "SEARCH data_segments USING INDEX ux_data_segments_rows (dataset=?)",
        "USE TEMP B-TREE FOR GROUP BY",
        "SEARCH data_segments USING INDEX ux_data_segments_rows (dataset=? AND first_row_id>?)",
        "SEARCH data_segments USING INDEX ux_data_segments_rows (dataset=? AND first_row_id>?)",
        "SEARCH data_segments USING INDEX ux_data_segments_rows (dataset=? AND first_row_id>?)",
        "SEARCH datasets USING INDEX sqlite_autoindex_datasets_1 (name=?)",
    ],
}

# PostgreSQL's indexes for each call (whether it reads them by index, index-only or bitmap scan is its choice).
POSTGRES_INDEXES = {
    "list: first page": {"idx_prediction_sets_newest"},
    "list: next page": {"idx_prediction_sets_newest", "prediction_sets_pkey"},
    "list: current only": {"prediction_sets_pkey", "ux_prediction_sets_one_current"},
    "list: not archived, next page": {"idx_prediction_sets_unarchived", "prediction_sets_pkey"},
    "list: created after": {"idx_prediction_sets_newest"},
    "current lookup": {"ux_prediction_sets_one_current"},
    "current of every type": {"ux_prediction_sets_one_current"},
    "registrar: record and promote": {"prediction_sets_pkey", "ux_prediction_sets_one_current"},
    "registrar: promote": {"prediction_sets_pkey", "ux_prediction_sets_one_current"},
    "registrar: after a failed Train": {"idx_prediction_sets_artifact"},
    "gc": {
        "idx_prediction_sets_newest",
        "idx_prediction_sets_unarchived",
        "prediction_sets_pkey",
        "ux_prediction_sets_one_current",
    },
    "rollback": {"idx_prediction_sets_newest", "ux_prediction_sets_one_current", "idx_promotions_type"},
    "start-up": {"idx_prediction_sets_newest", "prediction_sets_pkey", "ux_prediction_sets_one_current"},
    "start-up fallback": {"idx_prediction_sets_unarchived"},
    "orphan check": {"idx_prediction_sets_artifact"},
    "v2 versions": {"idx_prediction_sets_unarchived"},
    "ingest": {"data_history_pkey", "idx_data_history_dataset"},
    "ingest: a batch": {"data_history_pkey", "idx_data_history_dataset", "ingest_batches_pkey"},
    "ingest: resume": {"ingest_batches_pkey"},
    "train data": set(),
}
# Where PostgreSQL may read a table whole: datasets has a row per dataset and data_segments one per MiB of
# features (a handful here: the planner takes their indexes as they grow), and counting a dataset's rows
# reads them all, here half of data_history. Everything else, and all of prediction_sets, goes by index.
POSTGRES_SEQUENTIAL = {"datasets", "data_segments", "SELECT COUNT(*) FROM data_history WHERE dataset = ?"}


def test_every_statement_of_the_bounded_calls_reads_by_index_on_sqlite(tmp_path: Path) -> None:
    database = migrated(tmp_path / "history.db")
    long_history(database)
    plans = {
        name: [line for sql, parameters in statements for line in sqlite_plan(database, sql, parameters)]
        for name, statements in recorded(database).items()
    }
    assert plans == SQLITE_PLANS
    scans = {line for lines in plans.values() for line in lines if line.startswith("SCAN")}
    assert scans == {"SCAN types", "SCAN prediction_sets USING INDEX ux_prediction_sets_one_current"}


def test_every_statement_of_the_bounded_calls_reads_by_index_on_postgresql(postgres_url: str) -> None:
    database = migrated(postgres_url)
    try:
        long_history(database)
        with database.reading() as conn:
            conn.execute("ANALYZE")
        indexes: dict[str, set[str]] = {}
        for name, statements in recorded(database).items():
            indexes[name] = set()
            for sql, parameters in statements:
                for node, table, index in postgres_plan(database, sql, parameters):
                    if node == "Seq Scan":
                        assert table in POSTGRES_SEQUENTIAL or sql in POSTGRES_SEQUENTIAL, (name, sql)
                    elif index:
                        indexes[name].add(index)
        # Counting half of data_history: a sequential scan or an index-only scan of the dataset's index, as
        # PostgreSQL's visibility map stands after autovacuum; both read no other dataset's index entries.
        assert indexes.pop("train data") <= {"idx_data_history_dataset"}
        assert indexes == {name: found for name, found in POSTGRES_INDEXES.items() if name != "train data"}
    finally:
        database.close()


def test_the_calls_answer_as_reading_everything_would(tmp_path: Path) -> None:
    """The bounded queries give what the whole history gives: model types, orphans, retention candidates."""
    database = migrated(tmp_path / "answers.db")
    long_history(database)
    sets = PredictionSetRepository(database)
    every = [r for t in range(TYPES) for r in sets.for_model_type(f"t{t}")]
    assert sets.model_types() == sorted({r.model_type for r in every}) == sorted(f"t{t}" for t in range(TYPES))
    names = ["t3-499.joblib", "t4-7.joblib", "stray.joblib", *(f"x{i}.joblib" for i in range(1200))]
    recorded_paths = {r.artifact.relative_path for r in every if r.artifact}
    assert sets.known_paths(names) == recorded_paths & set(names) == {"t3-499.joblib", "t4-7.joblib"}
    assert sets.known_paths([]) == set()
    t3 = sets.for_model_type("t3")
    live = [r.id for r in t3 if not r.is_current and r.artifact and not r.archived_at]
    assert [r.id for r in sets.retained("t3")] == live and len(live) == 2
    assert [r.id for r in sets.retained("t3", older_than=live[0])] == live[1:]
    assert [r.id for r in sets.retained("t3", limit=1)] == live[:1]
    assert [r.id for r in sets.retained("t3", older_than=live[0], limit=4)] == live[1:]
    assert [r.id for r in sets.retained_beyond("t3", 1)] == live[1:]
    assert [r.id for r in sets.retained_beyond("t3", 0)] == live
    assert sets.retained_beyond("t3", len(live)) == []
    assert sets.recent_versions("t3", 100) == [r.id for r in t3 if not r.archived_at]
    assert sets.recent_versions("t3", 1) == [t3[0].id]
    assert sets.has_model_type("t3") and not sets.has_model_type("t99")
    assert not sets.is_empty()
    database.close()
    assert PredictionSetRepository(migrated(tmp_path / "empty.db")).is_empty()
