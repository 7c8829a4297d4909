"""PredictionSetRepository: every statement on prediction_sets and promotions, and the mapping of their rows
to domain records. Each statement is written once, for both dialects, and each reads through an index
(tests/test_query_plans.py). HistoryRepository, for data_history, is in server/storage/history.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from predserve.server.domain import (
    ArtifactInfo,
    NewPredictionSet,
    PredictionSetRecord,
    RuntimeRecord,
    Schema,
    SelfCheck,
)
from predserve.server.errors import StorageError
from predserve.server.storage.databases import ChangeFeed, Connection, RegistryDatabase

# known_paths asks about this many names per statement (SQLite allows 32,766 parameters, older builds 999).
_NAMES_PER_STATEMENT = 500
# older_retained reads this many sets per query; each one its caller tries costs an artifact read.
OLDER_PAGE = 4


_SET_COLUMNS = (
    "id, model_type, dataset, created_at, is_current, metrics, model_artifact_path, artifact_sha256, "
    "artifact_size_bytes, algorithm, task, params, feature_names, classes, training_rows, fit_seconds, "
    "sklearn_version, environment, self_check, origin, archived_at, artifact_signature, runtime_path, "
    "runtime_sha256, runtime_size_bytes, runtime_signature, runtime_record, input_schema"
)


@dataclasses.dataclass(frozen=True)
class SetFilter:
    """Which of a model type's sets a page holds."""

    current_only: bool = False
    exclude_archived: bool = False
    created_after: dt.datetime | None = None  # timezone-aware


class PredictionSetRepository:
    """prediction_sets: every trained pipeline, which file holds it, and which one is current."""

    def __init__(self, database: RegistryDatabase) -> None:
        self.database = database

    def insert(
        self,
        new: NewPredictionSet,
        make_current: bool = False,
        reason: str = "train",
        promote_if: Callable[[PredictionSetRecord | None], bool] | None = None,
        commit_by: float | None = None,
    ) -> PredictionSetRecord:
        """Records a prediction set and returns it as stored; if asked, it becomes the only current one
        of its type in the same transaction, and the promotion log gives `reason`.

        `promote_if` decides instead of `make_current`, from the current set as read inside this very
        transaction, under the model type's lock: no other writer can change it between the comparison
        and the switch, so a set that is told it was promoted really is current when this commits.
        With `commit_by` (time.monotonic()), nothing is recorded unless the commit happens before then.
        """
        with self.database.changing_sets(commit_by) as conn:
            if promote_if is not None:
                self.database.lock_model_type(conn, new.model_type)
                make_current = promote_if(self._current(conn, new.model_type))
            row = conn.execute(
                f"""INSERT INTO prediction_sets (
                       model_type, dataset, is_current, metrics, model_artifact_path, artifact_sha256,
                       artifact_size_bytes, algorithm, task, params, feature_names, classes,
                       training_rows, fit_seconds, sklearn_version, environment, self_check, origin,
                       artifact_signature, runtime_path, runtime_sha256, runtime_size_bytes, runtime_signature,
                       runtime_record, input_schema)
                   VALUES (?, ?, FALSE, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   RETURNING {_SET_COLUMNS}""",
                _insert_parameters(new),
            ).fetchall()[0]
            record = _record(row)
            if not make_current:
                self.database.announce_change(conn, new.model_type)
                return record
            self._make_current(conn, new.model_type, record.id, reason)
            return dataclasses.replace(record, is_current=True)

    def promote(self, set_id: int, reason: str) -> None:
        """Makes an existing set the only current one of its model type and logs the promotion."""
        with self.database.changing_sets() as conn:
            row = conn.execute("SELECT model_type FROM prediction_sets WHERE id = ?", (set_id,)).fetchone()
            if row is None:
                raise StorageError(f"prediction set {set_id} vanished before its promotion")
            self._make_current(conn, row[0], set_id, reason)

    def _make_current(self, conn: Connection, model_type: str, set_id: int, reason: str) -> None:
        self.database.lock_model_type(conn, model_type)
        conn.execute(
            "UPDATE prediction_sets SET is_current = FALSE WHERE model_type = ? AND is_current AND id != ?",
            (model_type, set_id),
        )
        conn.execute("UPDATE prediction_sets SET is_current = TRUE WHERE id = ?", (set_id,))
        conn.execute(
            "INSERT INTO promotions (model_type, prediction_set_id, reason) VALUES (?, ?, ?)",
            (model_type, set_id, reason),
        )
        self.database.announce_change(conn, model_type)

    def previous_current(self, model_type: str) -> int | None:
        """The set that was current before the present one, from the promotion log."""
        with self.database.reading() as conn:
            row = conn.execute(
                """SELECT p.prediction_set_id FROM promotions p
                    WHERE p.model_type = ?
                      AND p.prediction_set_id NOT IN (
                          SELECT id FROM prediction_sets WHERE model_type = ? AND is_current)
                    ORDER BY p.id DESC LIMIT 1""",
                (model_type, model_type),
            ).fetchone()
        return None if row is None else int(row[0])

    def current(self, model_type: str) -> PredictionSetRecord | None:
        with self.database.reading() as conn:
            return self._current(conn, model_type)

    @staticmethod
    def _current(conn: Connection, model_type: str) -> PredictionSetRecord | None:
        row = conn.execute(
            f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE model_type = ? AND is_current", (model_type,)
        ).fetchone()
        return None if row is None else _record(row)

    def current_ids(self) -> dict[str, int]:
        with self.database.reading() as conn:
            rows = conn.execute("SELECT model_type, id FROM prediction_sets WHERE is_current").fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def archive(self, set_ids: Sequence[int]) -> set[int]:
        """Marks sets retention removes (their artifacts are deleted next), unless one became current meanwhile;
        the rows stay as history. Returns the sets archived now. Announced per model type, so that every replica
        drops them from its cache of pinned sets at once."""
        if not set_ids:
            return set()
        marks = ", ".join("?" for _ in set_ids)
        with self.database.changing_sets() as conn:
            rows = conn.execute(
                f"""UPDATE prediction_sets SET archived_at = {self.database.now_sql}
                    WHERE id IN ({marks}) AND NOT is_current AND archived_at IS NULL
                    RETURNING id, model_type""",
                tuple(set_ids),
            ).fetchall()
            for model_type in sorted({str(row[1]) for row in rows}):
                self.database.announce_change(conn, model_type)
        return {int(row[0]) for row in rows}

    def archived_among(self, set_ids: Sequence[int]) -> set[int]:
        """Those of the sets that are archived, or no longer recorded at all: one index read each."""
        if not set_ids:
            return set()
        marks = ", ".join("?" for _ in set_ids)
        with self.database.reading() as conn:
            rows = conn.execute(
                f"SELECT id FROM prediction_sets WHERE id IN ({marks}) AND archived_at IS NULL", tuple(set_ids)
            ).fetchall()
        return set(set_ids) - {int(row[0]) for row in rows}

    def current_sets(self) -> list[PredictionSetRecord]:
        with self.database.reading() as conn:
            rows = conn.execute(
                f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE is_current ORDER BY model_type"
            ).fetchall()
        return [_record(row) for row in rows]

    def is_empty(self) -> bool:
        with self.database.reading() as conn:
            return conn.execute("SELECT MIN(id) FROM prediction_sets").fetchone()[0] is None

    def model_types(self) -> list[str]:
        """Every model type, one index seek each (a loose scan of idx_prediction_sets_newest), not every set."""
        with self.database.reading() as conn:
            rows = conn.execute(
                """WITH RECURSIVE types (name) AS (
                       SELECT MIN(model_type) FROM prediction_sets
                       UNION ALL
                       SELECT (SELECT MIN(model_type) FROM prediction_sets WHERE model_type > types.name) FROM types
                        WHERE types.name IS NOT NULL)
                   SELECT name FROM types WHERE name IS NOT NULL"""
            ).fetchall()
        return [row[0] for row in rows]

    def has_model_type(self, model_type: str) -> bool:
        with self.database.reading() as conn:
            # Ordered as idx_prediction_sets_newest, so that no planner prefers a scan that may meet no match.
            row = conn.execute(
                "SELECT id FROM prediction_sets WHERE model_type = ? ORDER BY created_at DESC, id DESC LIMIT 1",
                (model_type,),
            ).fetchone()
        return row is not None

    def get(self, set_id: int) -> PredictionSetRecord | None:
        with self.database.reading() as conn:
            row = conn.execute(f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE id = ?", (set_id,)).fetchone()
        return None if row is None else _record(row)

    def for_model_type(self, model_type: str) -> list[PredictionSetRecord]:
        """Every set of a model type, newest first: all its history, so for tests and small tools; the server's
        calls use `page`, `retained` or `recent_versions`, which read only what they return."""
        with self.database.reading() as conn:
            rows = conn.execute(
                f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE model_type = ? ORDER BY id DESC",
                (model_type,),
            ).fetchall()
        return [_record(row) for row in rows]

    def page(
        self, model_type: str, limit: int, after_id: int | None = None, only: SetFilter = SetFilter()
    ) -> list[PredictionSetRecord] | None:
        """Up to `limit` sets of a model type that `only` keeps, newest first (created_at, then id, descending),
        from just after the set `after_id` in that order (the last of the previous page) if given; None when
        `after_id` names no set. Keyset paging: a page costs its own rows, however long the history, and
        sets recorded meanwhile never shift the next page."""
        conditions, parameters = ["model_type = ?"], [model_type]
        if only.current_only:  # through the one-current index, whatever else is asked
            conditions = ["id = (SELECT id FROM prediction_sets WHERE model_type = ? AND is_current)"]
        if only.exclude_archived:
            conditions.append("archived_at IS NULL")
        if only.created_after is not None:
            conditions.append("created_at > ?")
            parameters.append(self.database.timestamp_parameter(only.created_after))
        with self.database.reading() as conn:
            if after_id is not None:
                anchor = conn.execute("SELECT created_at, id FROM prediction_sets WHERE id = ?", (after_id,)).fetchone()
                if anchor is None:
                    return None
                conditions.append("(created_at, id) < (?, ?)")
                parameters += [anchor[0], anchor[1]]
            rows = conn.execute(
                f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE {' AND '.join(conditions)} "
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                (*parameters, limit),
            ).fetchall()
        return [_record(row) for row in rows]

    def retained(
        self, model_type: str, older_than: int | None = None, limit: int | None = None
    ) -> list[PredictionSetRecord]:
        """The sets of a model type that are not current and still have their artifact, newest (highest id)
        first, only those below the id `older_than` if given, at most `limit` if given: what retention may
        delete, and what start-up may fall back to. Read through idx_prediction_sets_unarchived: retention
        keeps this to a few per type."""
        parameters: list[Any] = [model_type]
        below = at_most = ""
        if older_than is not None:
            below = " AND id < ?"
            parameters.append(older_than)
        if limit is not None:
            at_most = " LIMIT ?"
            parameters.append(limit)
        with self.database.reading() as conn:
            rows = conn.execute(
                f"SELECT {_SET_COLUMNS} FROM prediction_sets WHERE model_type = ? AND archived_at IS NULL "
                f"AND model_artifact_path IS NOT NULL AND NOT is_current{below} ORDER BY id DESC{at_most}",
                parameters,
            ).fetchall()
        return [_record(row) for row in rows]

    def older_retained(self, model_type: str, below: int | None) -> Iterator[PredictionSetRecord]:
        """The retained sets (as `retained` has them) older than the id `below` (every one if None), newest
        first, OLDER_PAGE per query: a caller looking for the first that verifies (start-up's fallback, gc's
        fallback candidate) usually stops at the first, so neither the history nor every candidate is read."""
        while True:
            page = self.retained(model_type, older_than=below, limit=OLDER_PAGE)
            yield from page
            if len(page) < OLDER_PAGE:
                return
            below = page[-1].id

    def retained_beyond(self, model_type: str, keep: int) -> list[PredictionSetRecord]:
        """The retained sets (as `retained` has them) past the newest `keep`, newest first: what a gc keeping
        `keep` may delete. One seek past `keep` index entries finds where they start; only they are read."""
        if keep <= 0:
            return self.retained(model_type)
        with self.database.reading() as conn:
            row = conn.execute(
                "SELECT id FROM prediction_sets WHERE model_type = ? AND archived_at IS NULL "
                "AND model_artifact_path IS NOT NULL AND NOT is_current ORDER BY id DESC LIMIT 1 OFFSET ?",
                (model_type, keep - 1),
            ).fetchone()
        return [] if row is None else self.retained(model_type, older_than=int(row[0]))

    def recent_versions(self, model_type: str, limit: int) -> list[int]:
        """The ids of the newest `limit` sets of a model type that still have their artifact, current or not."""
        with self.database.reading() as conn:
            rows = conn.execute(
                "SELECT id FROM prediction_sets WHERE model_type = ? AND archived_at IS NULL "
                "AND model_artifact_path IS NOT NULL ORDER BY created_at DESC, id DESC LIMIT ?",
                (model_type, limit),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def change_feed(self) -> ChangeFeed | None:
        """Announcements of sets recorded or promoted by other processes, where the database makes them."""
        return self.database.change_feed()

    def records_artifact(self, relative_path: str) -> bool:
        """Whether any prediction set names this artifact file."""
        with self.database.reading() as conn:
            row = conn.execute(
                "SELECT 1 FROM prediction_sets WHERE model_artifact_path = ? LIMIT 1", (relative_path,)
            ).fetchone()
        return row is not None

    def known_paths(self, names: Iterable[str]) -> set[str]:
        """Those of the artifact file names that some set records: one index seek per name, so that the start-up
        check for orphans costs what the models directory holds, not the history."""
        wanted = sorted(set(names))
        known: set[str] = set()
        with self.database.reading() as conn:
            for start in range(0, len(wanted), _NAMES_PER_STATEMENT):
                chunk = wanted[start : start + _NAMES_PER_STATEMENT]
                rows = conn.execute(
                    "SELECT DISTINCT model_artifact_path FROM prediction_sets "
                    f"WHERE model_artifact_path IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                known.update(row[0] for row in rows)
        return known


def _insert_parameters(new: NewPredictionSet) -> tuple[Any, ...]:
    return (
        new.model_type,
        new.dataset,
        json.dumps(new.metrics),
        new.artifact.relative_path,
        new.artifact.sha256,
        new.artifact.size_bytes,
        new.algorithm,
        new.task,
        json.dumps(new.params),
        json.dumps(list(new.feature_names)),
        None if new.classes is None else json.dumps(list(new.classes)),
        new.training_rows,
        new.fit_seconds,
        new.environment.get("sklearn"),
        json.dumps(new.environment),
        json.dumps({"inputs": new.self_check.inputs, "outputs": new.self_check.outputs}),
        new.origin,
        new.artifact.signature,
        *_runtime_parameters(new.runtime),
        None if new.input_schema is None else json.dumps(new.input_schema.to_json()),
    )


def _runtime_parameters(runtime: RuntimeRecord | None) -> tuple[Any, ...]:
    if runtime is None:
        return (None, None, None, None, None)
    file = runtime.file
    record = {
        "name": runtime.name,
        "version": runtime.version,
        "rows_checked": runtime.rows_checked,
        "max_deviation": runtime.max_deviation,
        "note": runtime.note,
        "low": list(runtime.low),
        "high": list(runtime.high),
    }
    if file is None:
        return (None, None, None, None, json.dumps(record))
    return (file.relative_path, file.sha256, file.size_bytes, file.signature, json.dumps(record))


def _schema(text: str | None) -> Schema | None:
    document = _json(text, None)
    return None if document is None else Schema.from_json(document)


def _runtime_record(row: Any) -> RuntimeRecord | None:
    record = _json(row["runtime_record"], None)
    if record is None:
        return None
    file = None
    if row["runtime_path"] is not None:
        file = ArtifactInfo(
            relative_path=row["runtime_path"],
            sha256=row["runtime_sha256"] or "",
            size_bytes=int(row["runtime_size_bytes"] or 0),
            signature=row["runtime_signature"],
        )
    return RuntimeRecord(
        name=record["name"],
        version=record["version"],
        rows_checked=int(record["rows_checked"]),
        max_deviation=float(record["max_deviation"]),
        note=record["note"],
        low=tuple(record["low"]),
        high=tuple(record["high"]),
        file=file,
    )


def _json(text: str | None, default: Any) -> Any:
    return default if text is None else json.loads(text)


def _timestamp(value: str | dt.datetime | None) -> Any:
    """SQLite stores ISO-8601 text; PostgreSQL's timestamptz is rendered in the very same form."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return value


def _record(row: Any) -> PredictionSetRecord:
    artifact = None
    if row["model_artifact_path"] is not None:
        artifact = ArtifactInfo(
            relative_path=row["model_artifact_path"],
            sha256=row["artifact_sha256"] or "",
            size_bytes=int(row["artifact_size_bytes"] or 0),
            signature=row["artifact_signature"],
        )
    self_check = _json(row["self_check"], None)
    classes = _json(row["classes"], None)
    return PredictionSetRecord(
        id=int(row["id"]),
        model_type=row["model_type"],
        dataset=row["dataset"],
        created_at=_timestamp(row["created_at"]),
        is_current=bool(row["is_current"]),
        metrics=_json(row["metrics"], {}) or {},
        algorithm=row["algorithm"],
        task=row["task"],
        params=_json(row["params"], {}),
        feature_names=tuple(_json(row["feature_names"], [])),
        classes=None if classes is None else tuple(classes),
        training_rows=row["training_rows"],
        fit_seconds=row["fit_seconds"],
        artifact=artifact,
        sklearn_version=row["sklearn_version"],
        environment=_json(row["environment"], {}),
        self_check=None if self_check is None else SelfCheck(self_check["inputs"], self_check["outputs"]),
        origin=row["origin"],
        archived_at=_timestamp(row["archived_at"]),
        runtime=_runtime_record(row),
        input_schema=_schema(row["input_schema"]),
    )
