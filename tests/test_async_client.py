"""AsyncPredserveClient against real servers: the same answers as the sync client, and an event loop that keeps
running while hundreds of its calls are in flight."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from predserve.client import AsyncPredserveClient, DeadlineExceeded, PredserveClient, UnavailableError
from tests.support import IRIS_PROBES, ServerProcess, iris_rows
from tests.test_client_balancing import Replica, replicas  # noqa: F401  (the fixture)

CONCURRENT_CALLS = 200
TICK_SECONDS = 0.01
# A loop that is never blocked wakes each ticker within a few ticks, even on a busy machine; a client that
# blocked the loop for its calls would leave a gap as long as the calls themselves.
MAX_GAP_SECONDS = 0.5


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """iris trained, and room for every concurrent call (the default limit, 64, would refuse most of them)."""
    args = ["--max-concurrent-rpcs", str(CONCURRENT_CALLS + 16)]
    process = ServerProcess(tmp_path_factory.mktemp("async"), extra_args=args).start()
    with process.client() as client:
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train("iris_classifier", dataset="iris", algorithm="logistic_regression")
    yield process
    process.kill()


class Ticker:
    """Ticks every TICK_SECONDS on the loop, noting the longest gap and how many ticks found calls in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.ticks_in_flight = 0
        self.max_gap = 0.0
        self.running = True

    async def run(self) -> None:
        last = time.monotonic()
        while self.running:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            if self.in_flight:
                self.ticks_in_flight += 1

    async def track(self, call: Callable[[], Awaitable[Any]]) -> Any:
        self.in_flight += 1
        try:
            return await call()
        finally:
            self.in_flight -= 1


async def concurrent_predicts(predict: Callable[[], Awaitable[Any]]) -> tuple[list[Any], Ticker]:
    ticker = Ticker()
    ticking = asyncio.create_task(ticker.run())
    await asyncio.sleep(TICK_SECONDS * 3)  # the ticker is running before the first call
    try:
        answers = await asyncio.gather(*(ticker.track(predict) for _ in range(CONCURRENT_CALLS)))
    finally:
        ticker.running = False
        await ticking
    return answers, ticker


def test_200_concurrent_predicts_leave_the_loop_responsive(roomy: ServerProcess) -> None:
    # 50 rows a call: each takes the server real work, so the calls overlap the ticks whatever the machine.
    rows = IRIS_PROBES * 12 + IRIS_PROBES[:2]
    with roomy.client() as client:
        expected = [p.value.integer for p in client.predict("iris_classifier", rows).predictions]

    async def scenario() -> tuple[list[Any], Ticker]:
        async with AsyncPredserveClient(roomy.target) as client:
            await client.wait_until_ready(10)
            return await concurrent_predicts(lambda: client.predict("iris_classifier", rows))

    answers, ticker = asyncio.run(scenario())
    assert len(answers) == CONCURRENT_CALLS
    assert all([p.value.integer for p in answer.predictions] == expected for answer in answers)
    assert ticker.max_gap < MAX_GAP_SECONDS, ticker.max_gap
    assert ticker.ticks_in_flight >= 3, ticker.ticks_in_flight  # the loop ran while the calls were out


def test_the_ticker_notices_a_client_that_blocks_the_loop(roomy: ServerProcess) -> None:
    """The measure above can fail: the blocking client called from coroutines never lets a tick in mid-call."""

    async def scenario() -> Ticker:
        with PredserveClient(roomy.target) as client:

            async def blocking_predict() -> Any:
                return client.predict("iris_classifier", IRIS_PROBES)

            _, ticker = await concurrent_predicts(blocking_predict)
            return ticker

    assert asyncio.run(scenario()).ticks_in_flight == 0


def test_the_async_client_has_the_sync_clients_methods_and_answers(roomy: ServerProcess) -> None:
    with roomy.client() as client:
        models = client.list_models()
        sets = client.list_prediction_sets("iris_classifier")
        probabilities = client.predict("iris_classifier", IRIS_PROBES, include_probabilities=True)

    async def scenario() -> dict[str, Any]:
        async with AsyncPredserveClient(roomy.target) as client:
            ingested = await client.ingest("extra", [([1.0, 2.0], 0), ([2.0, 1.0], 1)] * 10, ["a", "b"])
            return {
                "health": await client.health(),
                "model health": await client.health("predserve.model.iris_classifier"),
                "models": await client.list_models(),
                "sets": await client.list_prediction_sets("iris_classifier"),
                "predict": await client.predict("iris_classifier", IRIS_PROBES, include_probabilities=True),
                "ingested": ingested.total_rows,
                "gc": (await client.garbage_collect(5, dry_run=True)).dry_run,
            }

    answers = asyncio.run(scenario())
    assert answers["health"] == answers["model health"] == "SERVING"
    assert answers["models"] == models and answers["sets"] == sets
    assert answers["predict"] == probabilities
    assert answers["ingested"] == 20 and answers["gc"] is True
    assert set(dir(PredserveClient)) - set(dir(AsyncPredserveClient)) <= {"__enter__", "__exit__"}


def test_deadlines_per_method_class_per_client_and_per_call(roomy: ServerProcess) -> None:
    # A 300-tree forest takes the server far longer than 50 ms to fit, persist and prove.
    forest: dict[str, Any] = {"dataset": "iris", "algorithm": "random_forest", "params": {"n_estimators": 300}}

    async def scenario() -> tuple[DeadlineExceeded, DeadlineExceeded]:
        async with AsyncPredserveClient(roomy.target, admin_deadline_seconds=0.05) as hurried:
            with pytest.raises(DeadlineExceeded) as by_client:
                await hurried.train("slow_forest", **forest)
            assert (await hurried.predict("iris_classifier", IRIS_PROBES)).predictions  # another class: 10 s
        async with AsyncPredserveClient(roomy.target) as client:
            with pytest.raises(DeadlineExceeded) as by_call:
                await client.train("slow_forest", **forest, timeout=0.05)
        return by_client.value, by_call.value

    by_client, by_call = asyncio.run(scenario())
    assert by_client.code is by_call.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_async_calls_spread_over_serving_replicas_only(replicas: list[Replica]) -> None:  # noqa: F811
    targets = [f"127.0.0.1:{r.port}" for r in replicas]

    async def where_calls_go(client: AsyncPredserveClient) -> collections.Counter[int]:
        answers = [await client.predict("m", [[1.0]]) for _ in range(40)]
        return collections.Counter(a.prediction_set_id for a in answers)

    async def eventually(client: AsyncPredserveClient, expected: set[int]) -> collections.Counter[int]:
        deadline = time.monotonic() + 10
        while set(spread := await where_calls_go(client)) != expected:
            assert time.monotonic() < deadline, f"calls still go to {spread}, not to {expected}"
            await asyncio.sleep(0.05)
        return await where_calls_go(client)  # a fresh round, once the replicas' states have settled

    async def scenario() -> None:
        async with AsyncPredserveClient(targets, deadline_seconds=5) as client:
            await client.wait_until_ready(10)
            assert (await eventually(client, {1, 2})) == {1: 20, 2: 20}  # round robin, not pick-first
            replicas[1].set_serving(False)  # a replica that received SIGTERM
            assert (await eventually(client, {1})) == {1: 40}
            replicas[1].set_serving(True)
            await eventually(client, {1, 2})

    asyncio.run(scenario())


def test_no_server_is_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncPredserveClient("127.0.0.1:1", max_attempts=1) as client:
            with pytest.raises(UnavailableError):
                await client.wait_until_ready(0.5)
            with pytest.raises(UnavailableError) as call:
                await client.predict("m", [[1.0]])
            assert call.value.code is grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())
