"""Micro-batching never changes an answer: batched calls get, bit for bit, what each call alone would get."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

from predserve.server.services.batching import MicroBatcher, batch_invariant
from predserve.server.services.catalog import CATALOG, CLASSIFICATION
from predserve.server.services.prediction import _predict

CALLS = 48


def _fitted(algorithm: str) -> tuple[Any, np.ndarray]:
    recipe = CATALOG[algorithm]
    x, y = load_iris(return_X_y=True) if recipe.task == CLASSIFICATION else load_diabetes(return_X_y=True)
    pipeline = recipe.build({"n_estimators": 20} if "random_forest" in algorithm else {}, seed=3).fit(x, y)
    rng = np.random.default_rng(7)
    # Perturbed rows, so that no answer is a tie that would hide a rounding difference.
    return pipeline, x[rng.integers(0, len(x), CALLS)] + rng.normal(0, 0.05, (CALLS, x.shape[1]))


class CountingCompute:
    """The service's own predict, recording the size of every matrix it is given."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, pipeline: Any, features: np.ndarray, probabilities: bool) -> Any:
        with self.lock:
            self.sizes.append(len(features))
        self.gate.wait(5)  # the first call holds the lane until every other call has queued behind it
        return _predict(pipeline, features, probabilities)


def _concurrent_answers(batcher: MicroBatcher, pipeline: Any, rows: list[np.ndarray], proba: bool) -> list[Any]:
    compute = CountingCompute()
    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        futures = [pool.submit(batcher.run, pipeline, r, proba, compute) for r in rows]
        threading.Timer(0.3, compute.gate.set).start()
        answers = [f.result(timeout=30) for f in futures]
    return [answers, compute.sizes]


@pytest.mark.parametrize("algorithm", sorted(CATALOG))
def test_batched_answers_equal_unbatched_ones(algorithm: str) -> None:
    pipeline, x = _fitted(algorithm)
    proba = hasattr(pipeline, "predict_proba")
    # Requests of 1 to 3 rows, as concurrent Predict calls would bring them.
    requests = [x[i : i + 1 + i % 3] for i in range(0, CALLS - 3, 2)]
    answers, sizes = _concurrent_answers(MicroBatcher(max_rows=64), pipeline, requests, proba)

    for request, (labels, probabilities) in zip(requests, answers, strict=True):
        alone_labels, alone_probabilities = _predict(pipeline, request, proba)
        assert np.array_equal(labels, alone_labels)
        assert labels.dtype == alone_labels.dtype
        if proba:
            assert np.array_equal(probabilities, alone_probabilities)
    if batch_invariant(pipeline):
        assert max(sizes) > 3, "the calls were meant to be answered together"
    else:
        assert max(sizes) <= 3, "a pipeline that is not batch-invariant must be answered call by call"


def test_which_catalog_recipes_are_batched() -> None:
    batched = {name for name in CATALOG if batch_invariant(_fitted(name)[0])}
    assert batched == {
        "random_forest",
        "random_forest_regressor",
        "hist_gradient_boosting",
        "hist_gradient_boosting_regressor",
    }


def test_a_linear_model_agrees_alone_and_together_only_to_rounding() -> None:
    """Why linear models are not batched: numpy's one-row product (gemv) and many-row product (gemm) may differ
    in the last bit. The check only documents the risk; on some BLAS builds they happen to agree."""
    pipeline, x = _fitted("logistic_regression")
    together = pipeline.predict_proba(x)
    alone = np.vstack([pipeline.predict_proba(x[i : i + 1]) for i in range(len(x))])
    assert np.allclose(together, alone, rtol=1e-12, atol=0)


def test_max_rows_bounds_a_batch_and_a_larger_request_runs_alone() -> None:
    pipeline, x = _fitted("random_forest")
    requests = [x[:40]] + [x[i : i + 1] for i in range(20)] + [x[:45]]
    answers, sizes = _concurrent_answers(MicroBatcher(max_rows=30), pipeline, requests, True)
    assert 40 in sizes and 45 in sizes  # each taken alone, never split
    assert all(size <= 30 for size in sizes if size not in (40, 45))
    for request, (labels, _) in zip(requests, answers, strict=True):
        assert np.array_equal(labels, pipeline.predict(request))


def test_an_error_in_a_batch_stays_with_its_call() -> None:
    pipeline, x = _fitted("random_forest")

    def compute(p: Any, features: np.ndarray, probabilities: bool) -> Any:
        if np.isnan(features).any():
            raise ValueError("bad row")
        return _predict(p, features, probabilities)

    good, bad = x[:1], np.full((1, x.shape[1]), np.nan)
    batcher = MicroBatcher(max_rows=64)
    gate = threading.Event()

    def slow_first(p: Any, features: np.ndarray, probabilities: bool) -> Any:
        gate.wait(5)
        return compute(p, features, probabilities)

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(batcher.run, pipeline, r, False, slow_first) for r in (good, good, bad, good, bad)]
        threading.Timer(0.3, gate.set).start()
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=30)[0].tolist())
            except ValueError as exc:
                outcomes.append(str(exc))
    expected = pipeline.predict(good).tolist()
    assert outcomes == [expected, expected, "bad row", expected, "bad row"]


def test_a_lone_caller_is_answered_alone_and_expects_nobody() -> None:
    pipeline, x = _fitted("random_forest")
    batcher = MicroBatcher(max_rows=64, max_wait=30.0)  # a wait would show as a hung test, not a slow one
    compute = CountingCompute()
    compute.gate.set()
    for i in range(5):
        labels, _ = batcher.run(pipeline, x[i : i + 1], False, compute)
        assert np.array_equal(labels, pipeline.predict(x[i : i + 1]))
    assert compute.sizes == [1] * 5
    lanes = next(iter(batcher._lanes.values()))
    assert [lane.expected for lane in lanes.values()] == [1]


def test_batching_off_calls_straight_through() -> None:
    pipeline, x = _fitted("random_forest")
    answers, sizes = _concurrent_answers(MicroBatcher(max_rows=0), pipeline, [x[i : i + 1] for i in range(8)], False)
    assert sizes == [1] * 8


def test_the_server_answers_concurrent_calls_as_an_unbatched_server_does(tmp_path: Any) -> None:
    """Real processes: one server batches (the default), a second on the same database does not."""
    from bench import loadgen
    from predserve.protos import grpc_predict_v2_pb2_grpc as pb_grpc
    from tests.support import ServerProcess, iris_rows

    batching = ServerProcess(tmp_path).start()
    plain = None
    try:
        with batching.client() as client:
            names, rows = iris_rows()
            client.ingest("iris", rows, names)
            client.train("iris_forest", dataset="iris", algorithm="random_forest")
        plain = ServerProcess(tmp_path, extra_args=["--batch-max-rows", "0"]).start()
        rng = np.random.default_rng(11)
        x = np.asarray([f for f, _ in rows])
        requests = [x[rng.integers(0, len(x), 1 + i % 3)] + rng.normal(0, 0.05, (1 + i % 3, 4)) for i in range(64)]

        def answers(target: str, concurrency: int) -> list[tuple[bytes, ...]]:
            with loadgen.channel(target) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)

                def ask(rows_: np.ndarray) -> tuple[bytes, ...]:
                    request = loadgen.infer_request("iris_forest", rows_, ("predict", "predict_proba"))
                    return tuple(stub.ModelInfer(request, timeout=30).raw_output_contents)

                with ThreadPoolExecutor(max_workers=concurrency) as pool:
                    return list(pool.map(ask, requests))

        assert answers(batching.target, 16) == answers(plain.target, 1)
    finally:
        batching.kill()
        if plain is not None:
            plain.kill()
