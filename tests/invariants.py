"""The invariant every fault test checks afterwards, on disk, in the database and on a restarted server.

1. `PRAGMA integrity_check` is ok.
2. At most one current row per model type.
3. Every row with an artifact path points at a regular file inside the models directory whose size and
   SHA-256 are the recorded ones (except rows a test broke on purpose), and no temporary file is left.
4. Every Train acknowledged to a client is in the database, as acknowledged, and no older set of its
   model type has become current again.
5. A running server serves exactly the database's current sets: ListModels, Predict and the per-model
   health status agree with the rows, except where a documented fallback applies.

The checker reads the database with sqlite3 directly, in read-only mode, so it cannot repair anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from predserve.client.library import FailedPreconditionError, PredserveClient
from predserve.protos import predserve_pb2 as pb
from tests.support import ServerProcess

TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class SetRow:
    id: int
    model_type: str
    is_current: bool
    artifact_path: str | None
    sha256: str | None
    size_bytes: int | None
    n_features: int


@dataclass
class Snapshot:
    """What the checker saw: every row, the current one per model type, and files no row points at."""

    rows: dict[int, SetRow]
    current: dict[str, SetRow]
    orphans: set[str] = field(default_factory=set)


class InvariantViolation(AssertionError):
    pass


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_rows(db: Path) -> dict[int, SetRow]:
    with _read_only(db) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(prediction_sets)")}
        has_artifacts = "model_artifact_path" in columns
        query = (
            "SELECT id, model_type, is_current, model_artifact_path, artifact_sha256, artifact_size_bytes, "
            "feature_names FROM prediction_sets"
            if has_artifacts
            else "SELECT id, model_type, is_current, NULL, NULL, NULL, NULL FROM prediction_sets"
        )
        rows = conn.execute(query).fetchall()
    return {
        row[0]: SetRow(row[0], row[1], bool(row[2]), row[3], row[4], row[5], len(_json_list(row[6]))) for row in rows
    }


def check_invariants(
    db: Path,
    models_dir: Path,
    *,
    acknowledged: Iterable[pb.TrainResponse] = (),
    server: ServerProcess | None = None,
    broken_sets: Iterable[int] = (),
    fallbacks: Mapping[str, int | None] | None = None,
) -> Snapshot:
    """Raises InvariantViolation listing every broken invariant; returns what it saw.

    broken_sets: rows whose artifact a test damaged on purpose (their file is not checked).
    fallbacks: model type -> the older set a restarted server must serve instead of the current one
    (ListModels says FALLBACK), or None when no set verifies (NOT_SERVING, Predict FAILED_PRECONDITION).
    """
    problems: list[str] = []
    with _read_only(db) as conn:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        doubled = conn.execute(
            "SELECT model_type, COUNT(*) FROM prediction_sets WHERE is_current GROUP BY model_type HAVING COUNT(*) > 1"
        ).fetchall()
    if integrity != ["ok"]:
        problems.append(f"integrity_check: {integrity}")
    problems += [f"model type {t} has {n} current rows" for t, n in doubled]

    rows = read_rows(db)
    current = {row.model_type: row for row in rows.values() if row.is_current}
    skip = set(broken_sets)
    for row in rows.values():
        if row.artifact_path is not None and row.id not in skip:
            problems += _artifact_problems(row, models_dir)
    problems += [f"temporary file left behind: {p.name}" for p in models_dir.glob(f"{TEMP_PREFIX}*")]
    problems += _acknowledged_problems(list(acknowledged), rows, current)

    if server is not None:
        problems += _served_problems(server, current, dict(fallbacks or {}))
    if problems:
        raise InvariantViolation("invariants broken:\n  " + "\n  ".join(problems))
    referenced = {row.artifact_path for row in rows.values() if row.artifact_path}
    stored = {p.name for p in models_dir.glob("*.joblib")} if models_dir.exists() else set()
    return Snapshot(rows=rows, current=current, orphans=stored - referenced)


def _artifact_problems(row: SetRow, models_dir: Path) -> list[str]:
    assert row.artifact_path is not None
    path = models_dir / row.artifact_path
    if Path(row.artifact_path).is_absolute() or ".." in Path(row.artifact_path).parts:
        return [f"set {row.id}: artifact path {row.artifact_path!r} is not a plain name"]
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return [f"set {row.id}: artifact {row.artifact_path} is missing"]
    if not stat.S_ISREG(mode):
        return [f"set {row.id}: artifact {row.artifact_path} is not a regular file"]
    problems = []
    size = path.stat().st_size
    if size != row.size_bytes:
        problems.append(f"set {row.id}: artifact has {size} bytes, recorded {row.size_bytes}")
    if sha256_of(path) != row.sha256:
        problems.append(f"set {row.id}: artifact SHA-256 differs from the recorded one")
    return problems


def _acknowledged_problems(
    acknowledged: list[pb.TrainResponse], rows: Mapping[int, SetRow], current: Mapping[str, SetRow]
) -> list[str]:
    problems = []
    newest: dict[str, int] = {}
    for answer in acknowledged:
        row = rows.get(answer.prediction_set_id)
        if row is None:
            problems.append(f"acknowledged Train of set {answer.prediction_set_id} is not in the database")
            continue
        recorded = (row.model_type, row.artifact_path, row.sha256, row.size_bytes)
        answered = (answer.model_type, answer.model_artifact_path, answer.artifact_sha256, answer.artifact_size_bytes)
        if recorded != answered:
            problems.append(f"set {row.id} in the database {recorded} is not what Train answered {answered}")
        newest[answer.model_type] = max(newest.get(answer.model_type, 0), answer.prediction_set_id)
    for model_type, set_id in newest.items():
        now = current.get(model_type)
        if now is None or now.id < set_id:
            problems.append(
                f"model type {model_type}: acknowledged set {set_id} was superseded by "
                f"{'no current set' if now is None else f'older set {now.id}'}"
            )
    return problems


def _served_problems(
    server: ServerProcess, current: Mapping[str, SetRow], fallbacks: Mapping[str, int | None]
) -> list[str]:
    problems = []
    with server.client() as client:
        listed = {m.model_type: m for m in client.list_models().models}
        if set(listed) != set(current) | set(fallbacks):
            problems.append(f"ListModels lists {sorted(listed)}, the database has current sets of {sorted(current)}")
        for model_type, row in current.items():
            model = listed.get(model_type)
            if model is None:
                continue
            health = client.health(f"predserve.model.{model_type}")
            if model_type in fallbacks:
                problems += _fallback_problems(client, model, row, fallbacks[model_type], health)
            elif row.artifact_path is None:
                if model.loaded or "needs training" not in model.status_message or health != "NOT_SERVING":
                    problems.append(f"{model_type}: a Phase-4 set should need training, got {model}, {health}")
            else:
                if not model.loaded or model.prediction_set_id != row.id or model.status_message.startswith("FALLBACK"):
                    problems.append(
                        f"{model_type}: ListModels says set {model.prediction_set_id} loaded={model.loaded} "
                        f"({model.status_message!r}); the database's current set is {row.id}"
                    )
                answer = client.predict(model_type, [[0.0] * row.n_features])
                if answer.prediction_set_id != row.id:
                    problems.append(f"{model_type}: Predict answered from set {answer.prediction_set_id}, not {row.id}")
                if health != "SERVING":
                    problems.append(f"{model_type}: health {health}, expected SERVING")
    return problems


def _fallback_problems(
    client: PredserveClient, model: pb.ModelStatus, row: SetRow, older: int | None, health: str
) -> list[str]:
    problems = []
    if older is None:
        if model.loaded or health != "NOT_SERVING" or f"current set {row.id} refused" not in model.status_message:
            problems.append(f"{row.model_type}: expected unavailable (no set verifies), got {model}, {health}")
        try:
            client.predict(row.model_type, [[0.0] * row.n_features])
            problems.append(f"{row.model_type}: Predict answered although no set verifies")
        except FailedPreconditionError as exc:
            if "has no usable model" not in exc.details:
                problems.append(f"{row.model_type}: Predict refused without the reason: {exc.details}")
        return problems
    expected_note = f"FALLBACK: current set {row.id} refused"
    if not model.loaded or model.prediction_set_id != older or not model.status_message.startswith(expected_note):
        problems.append(f"{row.model_type}: expected a fallback to set {older}, got {model}")
    answer = client.predict(row.model_type, [[0.0] * row.n_features])
    if answer.prediction_set_id != older:
        problems.append(f"{row.model_type}: Predict answered from set {answer.prediction_set_id}, not {older}")
    if health != "SERVING":
        problems.append(f"{row.model_type}: health {health} while serving its fallback, expected SERVING")
    return problems


def _json_list(text: str | None) -> list[object]:
    return [] if text is None else list(json.loads(text))


class _read_only:
    """A read-only sqlite3 connection that is really closed on exit (sqlite3's own context manager is not)."""

    def __init__(self, db: Path) -> None:
        if not db.exists():
            raise InvariantViolation(f"database {db} does not exist")
        self.conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
