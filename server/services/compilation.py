"""RuntimeBuilder: gives a prediction set its compiled form, proven faithful, and checks it again at load.

At Train and Import the artifact owner asks for one: the pipeline is compiled, the compiled bytes are
loaded back (the very bytes that will be stored), and the result must answer the set's held-out rows,
its self-check rows and a sample spread over the training range as the pipeline does: identical labels,
probabilities and values within the tolerance. Only then is it written beside the artifact and used.
At load the file is verified like an artifact and the proof is run again on the self-check rows and the
recorded range, against the pipeline's answers recorded in the file at Train (see `load`). Any failure
leaves the pipeline answering, with the reason recorded or logged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predserve.server.domain import (
    ArtifactInfo,
    ColumnType,
    PredictionSetRecord,
    RuntimeChoice,
    RuntimeRecord,
    Schema,
    SelfCheck,
)
from predserve.server.errors import PredserveError
from predserve.server.runtimes import Refusal, Runtime, compile_pipeline, load_runtime, proof_rows, prove
from predserve.server.runtimes.fidelity import prove_against, prove_recording, split_reference, with_reference
from predserve.server.runtimes.stored import UnstorableClasses
from predserve.server.runtimes.typed import TableRuntime, compile_typed
from predserve.server.runtimes.typed_proof import program_matches, prove_typed, refused_rows, typed_proof_frame
from predserve.server.services.pipeline_inputs import frame_of_rows
from predserve.server.storage.artifacts import ArtifactStore

logger = logging.getLogger(__name__)

# Held-out rows a proof checks at most: enough to meet every leaf a row is likely to, at a bounded cost.
MAX_HELD_OUT_ROWS = 1000


@dataclass(frozen=True)
class ProofEvidence:
    """What a new set offers its proof: rows held out of its fit, and the range of what it was fitted on."""

    held_out: np.ndarray | None
    low: tuple[float, ...]
    high: tuple[float, ...]
    # A pipeline that takes a DataFrame by column name: its schema, and its held-out rows as a DataFrame.
    schema: Schema | None = None
    held_out_frame: Any = None

    @property
    def by_name(self) -> bool:
        return self.schema is not None

    @classmethod
    def of(cls, held_out: np.ndarray | None, fitted_on: np.ndarray) -> ProofEvidence:
        low, high = tuple(fitted_on.min(axis=0).tolist()), tuple(fitted_on.max(axis=0).tolist())
        return cls(None if held_out is None else held_out[:MAX_HELD_OUT_ROWS], low, high)

    @classmethod
    def for_typed(cls, schema: Schema, held_out: Any = None) -> ProofEvidence:
        """A typed set's: its schema, and the rows held out of its fit (a DataFrame) when it has some."""
        rows = None if held_out is None or len(held_out) == 0 else held_out.iloc[:MAX_HELD_OUT_ROWS]
        return cls(None, (), (), schema, rows)


class RuntimeBuilder:
    def __init__(self, artifacts: ArtifactStore, choice: RuntimeChoice, tolerance: float) -> None:
        self.artifacts = artifacts
        self.choice = choice
        self.tolerance = tolerance

    def build(
        self,
        pipeline: Any,
        task: str,
        self_check: SelfCheck,
        evidence: ProofEvidence,
        artifact: ArtifactInfo,
        model_type: str,
    ) -> tuple[Runtime | None, RuntimeRecord]:
        """The compiled form that may answer for a new set (written beside its artifact), and its record."""
        if self.choice is RuntimeChoice.SKLEARN:
            return None, RuntimeRecord(note="--runtime sklearn: the pipeline answers")
        if evidence.schema is not None:
            held_out = evidence.held_out_frame
            return self._build_typed(pipeline, self_check, evidence.schema, held_out, artifact, model_type)
        form = compile_pipeline(pipeline, task)
        if isinstance(form, Refusal):
            return None, RuntimeRecord(note=f"no compiled form: {form.reason}")
        try:
            # The bytes about to be stored, not the object compiled from them, are what must be proven.
            runtime = load_runtime(form.runtime.name, form.data)
        except ValueError as exc:
            return None, RuntimeRecord(note=f"the compiled form does not load back: {exc}")
        rows = proof_rows(evidence.held_out, _inputs(self_check), evidence.low, evidence.high)
        proof, reference = prove_recording(pipeline, runtime, rows, self.tolerance)
        record = RuntimeRecord(
            name=runtime.name,
            version=runtime.version,
            rows_checked=proof.rows_checked,
            max_deviation=proof.max_deviation,
            low=evidence.low,
            high=evidence.high,
        )
        if not proof.passed:
            logger.warning(
                "%s: the %s form failed its proof (%s); the pipeline answers", model_type, runtime.name, proof.reason
            )
            return None, dataclasses.replace(record, note=f"the {runtime.name} form failed its proof: {proof.reason}")
        assert reference is not None  # a proof that passed compared with the pipeline's answers
        # The rows a load proves the form on again (all but the held-out ones, which the registry does not keep)
        # and the pipeline's answers there, stored with the form so that a load need not compute them again.
        held_out = 0 if evidence.held_out is None else len(evidence.held_out)
        try:
            data = with_reference(form.data, reference.stored_for(held_out, artifact.sha256))
        except UnstorableClasses:
            data = form.data  # proven against the pipeline at load, as files without a reference are
        file = self.artifacts.write_runtime(artifact, runtime.name, data, model_type)
        return runtime, dataclasses.replace(record, file=file)

    def _build_typed(
        self,
        pipeline: Any,
        self_check: SelfCheck,
        schema: Schema,
        held_out: Any,
        artifact: ArtifactInfo,
        model_type: str,
    ) -> tuple[Runtime | None, RuntimeRecord]:
        """A typed pipeline's form (its ColumnTransformer as numpy, then its estimator's form), proven on its
        held-out and self-check rows and on rows at every edge of its preprocessing (typed_proof.py)."""
        text = _text_columns(schema)
        form = compile_typed(pipeline, set(text))
        if isinstance(form, Refusal):
            return None, RuntimeRecord(note=f"no compiled form: {form.reason}")
        data = form.to_bytes()
        try:
            runtime: Any = load_runtime(form.name, data)  # the bytes about to be stored are what is proven
        except ValueError as exc:
            return None, RuntimeRecord(note=f"the compiled form does not load back: {exc}")
        given = [frame for frame in (held_out, _self_check_frame(schema, self_check)) if frame is not None]
        if not given:
            return None, RuntimeRecord(note="no compiled form: no rows to prove one on")
        import pandas as pd

        frame = typed_proof_frame(pd.concat(given, ignore_index=True), text)
        refused = refused_rows(pipeline, frame)  # once, for the proof and for the large calls' check
        proof = prove_typed(pipeline, runtime, frame, text, self.tolerance, refused)
        record = RuntimeRecord(
            name=runtime.name,
            version=runtime.version,
            rows_checked=proof.rows_checked,
            max_deviation=proof.max_deviation,
        )
        if not proof.passed:
            why = proof.reason
            logger.warning("%s: the %s form failed its proof (%s); the pipeline answers", model_type, form.name, why)
            return None, dataclasses.replace(record, note=f"the {form.name} form failed its proof: {proof.reason}")
        file = self.artifacts.write_runtime(artifact, runtime.name, data, model_type)
        large = _answering_large_calls(pipeline, runtime, frame, text, refused)
        return large, dataclasses.replace(record, file=file)

    def _load_typed(self, record: PredictionSetRecord, pipeline: Any, file: ArtifactInfo, name: str) -> tuple[Any, str]:
        """A typed set's form, verified, and proven again on its self-check rows and their edges."""
        schema = record.schema
        try:
            runtime: Any = load_runtime(name, self.artifacts.read_verified(file, record.model_type))
        except (PredserveError, ValueError) as exc:
            return None, f"compiled form refused ({exc}): the pipeline answers"
        rows = _self_check_frame(schema, record.self_check)
        if rows is None:
            return None, "compiled form not proven (no self-check rows): the pipeline answers"
        text = _text_columns(schema)
        frame = typed_proof_frame(rows, text)
        refused = refused_rows(pipeline, frame)  # once, for the proof and for the large calls' check
        proof = prove_typed(pipeline, runtime, frame, text, self.tolerance, refused)
        if not proof.passed:
            return None, f"compiled form fails its proof again ({proof.reason}): the pipeline answers"
        return _answering_large_calls(pipeline, runtime, frame, text, refused), ""

    def load(
        self, record: PredictionSetRecord, pipeline: Any, same_environment: bool = False
    ) -> tuple[Runtime | None, str]:
        """A recorded set's compiled form, verified and proven again; else None and why the pipeline answers.

        The proof at load compares the form with the pipeline's answers recorded in its file when
        `same_environment` says the pipeline, which has passed its self-check, runs on the libraries it was
        fitted with, so that it would give those answers again; otherwise with the pipeline's answers now."""
        runtime_record = record.runtime
        if self.choice is RuntimeChoice.SKLEARN:
            return None, ""
        if runtime_record is None:
            # Recorded before compiled forms existed: there are no held-out rows nor training range to prove one
            # against, and loading must not write. Training the type again gives it one.
            return None, "recorded before compiled forms: the pipeline answers (train again for one)"
        if runtime_record.file is None:
            return None, ""
        if record.input_schema is not None and not record.input_schema.numeric:
            return self._load_typed(record, pipeline, runtime_record.file, runtime_record.name)
        try:
            data = self.artifacts.read_verified(runtime_record.file, record.model_type)
            runtime_data, reference = split_reference(data)
            runtime = load_runtime(runtime_record.name, runtime_data)
        except (PredserveError, ValueError) as exc:
            return None, f"compiled form refused ({exc}): the pipeline answers"
        if reference is not None and (record.artifact is None or reference.pipeline_sha256 != record.artifact.sha256):
            return None, "compiled form refused (it was proven for another artifact): the pipeline answers"
        if reference is not None and same_environment:
            proof = prove_against(reference, runtime, self.tolerance)
        else:  # the recorded rows where there are some, else the rows a file without them was proven on
            rows = (
                reference.rows
                if reference is not None
                else proof_rows(None, _inputs(record.self_check), runtime_record.low, runtime_record.high)
            )
            proof = prove(pipeline, runtime, rows, self.tolerance)
        if not proof.passed:
            return None, f"compiled form fails its proof again ({proof.reason}): the pipeline answers"
        return runtime, ""


def _answering_large_calls(
    pipeline: Any, runtime: TableRuntime, frame: Any, text: Sequence[str], refused: Sequence[int]
) -> Any:
    """A typed tree form answers calls past its `most_rows` with the pipeline's estimator on the program's matrix,
    where the program is proven to give the very matrix the pipeline's steps give; else such calls go to the
    pipeline, a DataFrame each."""
    if runtime.inner.most_rows is None or not program_matches(pipeline, runtime, frame, text, refused):
        return runtime
    return runtime.with_estimator(pipeline[-1])


def _inputs(self_check: SelfCheck | None) -> np.ndarray | None:
    if self_check is None or not self_check.inputs:
        return None
    return np.asarray(self_check.inputs, dtype=np.float64)


def _text_columns(schema: Schema) -> list[str]:
    return [column.name for column in schema.columns if column.type is ColumnType.STRING]


def _self_check_frame(schema: Schema, self_check: SelfCheck | None) -> Any:
    if self_check is None or not self_check.inputs:
        return None
    return frame_of_rows(schema, self_check.inputs)
