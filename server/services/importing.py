"""ModelImportService: registers a pipeline trained elsewhere as a prediction set like any other.

This is an administrator's action: the file is a pickle and runs code when loaded. It is first
loaded in a separate process (server/import_probe.py) with a time limit, so that a crash or a hang
cannot take the server down; that process also answers the self-check rows and scores the dataset.
Only then does the artifact owner copy it atomically into the store, checksum it, prove it gives
the probe's answers here too, and register it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predserve.server.domain import IMPORTED, Column, Schema, SelfCheck, SetDescription
from predserve.server.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from predserve.server.options import flag_of
from predserve.server.services.admission import WorkSlots
from predserve.server.services.catalog import CLASSIFICATION, EVALUATED_ROWS, PRIMARY_METRIC, REGRESSION
from predserve.server.services.compilation import MAX_HELD_OUT_ROWS, ProofEvidence
from predserve.server.services.pipeline_inputs import frame_of_rows, rows_of_frame
from predserve.server.services.registration import ArtifactBytes, PromotionPolicy, Registration, SetRegistrar
from predserve.server.services.validation import check_feature_names, check_name, feature_matrix
from predserve.server.storage.history import HistoryRepository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportCommand:
    model_type: str
    data: bytes
    dataset: str = ""
    promotion: PromotionPolicy = PromotionPolicy.ALWAYS
    # The importer's statement of the pipeline's input columns, over what is inferred from it; () infers all.
    input_schema: tuple[Column, ...] = ()


@dataclass(frozen=True)
class _ImportData:
    """The dataset an import is scored on: a float64 matrix, or JSON rows of a typed dataset with its schema."""

    name: str = ""
    features: np.ndarray | None = None
    rows: list[list[Any]] | None = None
    schema: Schema | None = None
    targets: np.ndarray | None = None
    feature_names: tuple[str, ...] = field(default=())


class ModelImportService:
    def __init__(
        self,
        history: HistoryRepository,
        registrar: SetRegistrar,
        probe_timeout_seconds: float = 60.0,
        max_bytes: int = 1024**3,
        trusted_modules: tuple[str, ...] = (),
        slots: WorkSlots | None = None,
    ) -> None:
        self.history = history
        self.registrar = registrar
        self.probe_timeout = probe_timeout_seconds
        self.max_bytes = max_bytes
        self.trusted_modules = trusted_modules
        # Shared with training: an import probes, unpickles and scores, as heavy as a small Train.
        self.slots = slots or WorkSlots(2, "Trains and imports", flag_of("max_concurrent_trains"))

    def import_model(self, command: ImportCommand) -> Registration:
        model_type = check_name("model_type", command.model_type)
        if not command.data:
            raise InvalidArgument("the artifact is empty")
        if len(command.data) > self.max_bytes:
            raise ResourceExhausted(f"the artifact has {len(command.data)} bytes, the limit is {self.max_bytes}")
        with self.slots.taken():
            return self._import(model_type, command)

    def _import(self, model_type: str, command: ImportCommand) -> Registration:
        given = self._dataset(command.dataset)
        features, targets, dataset = given.features, given.targets, given.name
        started = time.perf_counter()
        description = self._probe(command.data, _probe_request(given, command.input_schema))
        schema = Schema.from_json(description["input_schema"]) if description.get("input_schema") else None
        if schema is not None:  # names come in with an artifact too: the same rule as at ingest
            check_feature_names(schema.names, whose="the artifact's ")
        typed = schema is not None and not schema.numeric
        if features is not None and not typed and features.shape[1] != description["n_features"]:
            raise FailedPrecondition(
                f"the model expects {description['n_features']} features, dataset {dataset!r} has {features.shape[1]}"
            )
        task = CLASSIFICATION if description["classes"] is not None else REGRESSION
        set_description = SetDescription(
            model_type=model_type,
            dataset=dataset or "(imported)",
            algorithm=f"imported:{description['estimator']}",
            task=task,
            params={},
            metrics=_metrics(task, description["predictions"], targets),
            feature_names=schema.names if schema is not None else _feature_names(description, given.feature_names),
            classes=None if description["classes"] is None else tuple(description["classes"]),
            training_rows=0 if targets is None else len(targets),
            fit_seconds=0.0,
            # The probe's answers: the owner proves the stored file gives them in this process too.
            self_check=SelfCheck(description["sample"], description["outputs"]),
            origin=IMPORTED,
            # Numbers the pipeline takes as a matrix are what feature_names says; anything else is recorded.
            input_schema=schema if typed else None,
        )
        if typed:
            assert schema is not None
            # the dataset given, when there is one, is held out (the fit was elsewhere); else the probe's sample
            held_out = None
            if given.schema is not None and given.rows and set(schema.names) <= set(given.schema.names):
                held_out = frame_of_rows(given.schema, given.rows[:MAX_HELD_OUT_ROWS])[list(schema.names)]
            evidence = ProofEvidence.for_typed(schema, held_out)
        else:
            # Its compiled form is proven on the dataset given (all of it counts as held out: the fit was
            # elsewhere), or on the probe's sample alone.
            sample = np.asarray(description["sample"], dtype=np.float64)
            evidence = ProofEvidence.of(features, features if features is not None else sample)
        candidate = ArtifactBytes(command.data, evidence)
        registration = self.registrar.register(candidate, set_description, command.promotion)
        record = registration.model.record
        logger.info(
            "imported model type=%s set=%d estimator=%s path=%s in %.3fs (%s)",
            model_type,
            record.id,
            description["estimator"],
            record.artifact.relative_path if record.artifact else "",
            time.perf_counter() - started,
            registration.reason,
        )
        return registration

    def _dataset(self, name: str) -> _ImportData:
        if not name:
            return _ImportData()
        table = self.history.load_table(name) if self.history.is_typed(check_name("dataset", name)) else None
        if table is not None:  # strings or missing values: its rows as JSON, with its columns
            targets = np.asarray(table.targets)
            return _ImportData(name, None, rows_of_frame(table.frame), table.schema, targets, table.schema.names)
        dataset = self.history.load(name)
        if dataset is None:
            raise NotFound(f"dataset {name!r} has no rows in data_history")
        features = feature_matrix(dataset.features)
        return _ImportData(name, features, None, None, np.asarray(dataset.targets), dataset.feature_names)

    def _probe(self, data: bytes, request: dict[str, Any]) -> dict[str, Any]:
        # In the store's own directory, not the system temp dir: a crash here leaves it where start-up sweeps.
        with self.registrar.scratch_copy(data) as copy:
            try:
                completed = subprocess.run(
                    [sys.executable, "-m", "predserve.server.import_probe", str(copy), *self.trusted_modules],
                    input=json.dumps(request),
                    capture_output=True,
                    text=True,
                    timeout=self.probe_timeout,
                    cwd=Path(__file__).resolve().parents[2],
                )
            except subprocess.TimeoutExpired:
                raise FailedPrecondition(
                    f"loading the artifact took longer than {self.probe_timeout:.0f}s in the probe process; refused"
                ) from None
        if completed.returncode != 0 or not completed.stdout.strip():
            raise FailedPrecondition(
                f"the probe process loading the artifact died (exit status {completed.returncode}); refused"
            )
        description = _probe_answer(completed.stdout)
        if "error" in description:
            raise FailedPrecondition(f"the artifact cannot be served: {description['error']}")
        return description


# The keys of the probe's JSON line (server/import_probe.py): its refusal, or its description.
_PROBE_ANSWER_KEYS = (
    frozenset({"error"}),
    frozenset({"estimator", "n_features", "classes", "feature_names", "sample", "outputs", "predictions"}),
)


def _probe_answer(stdout: str) -> dict[str, Any]:
    """The probe's last JSON line. The artifact runs code in the probe and may print too, even after
    the answer (at exit), so the answer is the last line shaped like one, not simply the last line."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict) and any(keys <= answer.keys() for keys in _PROBE_ANSWER_KEYS):
            return answer
    printed = stdout.strip()[-200:]
    raise FailedPrecondition(
        f"the probe process loading the artifact gave no answer (the artifact printed {printed!r}); refused"
    )


def _probe_request(given: _ImportData, stated: tuple[Column, ...]) -> dict[str, Any]:
    """What the probe is given: the dataset's rows (a matrix's, or a typed dataset's with their columns) and the
    importer's statement of the columns."""
    rows = given.rows if given.rows is not None else None if given.features is None else given.features.tolist()
    # A matrix's columns are numbers named by the dataset: a pipeline taking a DataFrame is scored on them too.
    schema = given.schema or Schema.numbers(given.feature_names)
    return {
        "rows": rows,
        "dataset_schema": None if rows is None else schema.to_json(),
        "stated": [[column.name, column.type.value] for column in stated],
    }


def _feature_names(description: dict[str, Any], dataset_names: tuple[str, ...]) -> tuple[str, ...]:
    """The names the pipeline was fitted with, else the dataset's, else f0..fn."""
    if description["feature_names"]:
        check_feature_names(description["feature_names"], whose="the artifact's ")
        return tuple(description["feature_names"])
    if len(dataset_names) == description["n_features"]:
        return dataset_names
    return tuple(f"f{i}" for i in range(description["n_features"]))


def _metrics(task: str, predictions: list[Any] | None, targets: np.ndarray | None) -> dict[str, float]:
    """Scored on the whole dataset given at import (the model was fitted elsewhere, on unknown rows)."""
    if predictions is None or targets is None:
        return {}
    from sklearn.metrics import accuracy_score, r2_score

    if task == CLASSIFICATION:
        value = accuracy_score(targets.astype(str), np.asarray(predictions).astype(str))
    else:
        value = r2_score(targets.astype(np.float64), np.asarray(predictions, dtype=np.float64))
    return {PRIMARY_METRIC[task]: float(value), EVALUATED_ROWS: float(len(targets))}
