"""Compiled forms of fitted pipelines, and the proof that each answers as its pipeline does.

A scikit-learn pipeline's predict spends most of a one-row call validating its input; a compiled form
(ONNX Runtime, treelite, or a vectorised path of predserve's own) answers the same in microseconds.
Nothing here knows of the database or of gRPC: `compile_pipeline` turns a fitted pipeline into bytes
that `load_runtime` turns back into something that predicts, and `prove` decides whether it may answer.
"""

from __future__ import annotations

from predserve.server.runtimes.base import CompiledForm, Proof, Refusal, Runtime
from predserve.server.runtimes.compile import compile_pipeline, load_runtime
from predserve.server.runtimes.fidelity import proof_rows, prove

__all__ = [
    "CompiledForm",
    "Proof",
    "Refusal",
    "Runtime",
    "compile_pipeline",
    "load_runtime",
    "proof_rows",
    "prove",
]
