"""`predserve sets` and the client library a page at a time: one page of the server's default size with a hint
that there are more, --limit, --all, the filters and --json, and list_prediction_sets' paging arguments and
iter_prediction_sets on both clients, against a real server whose registry holds more sets than one page."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator

import pytest

from predserve.client.aio import AsyncPredserveClient
from tests.support import ServerProcess
from tests.test_cli import cli
from tests.test_paging import START, add_sets, migrated

SETS = 60  # hours 0..59 after START, every other one archived; more than the server's default page of 50
DEFAULT_PAGE = 50
HINT = "set(s) shown, newest first; more exist: --limit N for the first N, --all for every one"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module's read-only tests; its sets are rows alone (no artifact is ever loaded)."""
    workdir = tmp_path_factory.mktemp("sets-paging")
    database = migrated(workdir / "predictions.db")
    add_sets(database, "a", SETS, archived_every=2)
    database.close()
    (workdir / "models").mkdir(mode=0o700)
    process = ServerProcess(workdir).start()
    yield process
    process.kill()


@pytest.fixture(scope="module")
def newest_first(server: ServerProcess) -> list[int]:
    with server.client() as client:
        page = client.list_prediction_sets("a", page_size=1000)
    ids = [s.id for s in page.prediction_sets]
    assert len(ids) == SETS and ids == sorted(ids, reverse=True) and page.next_page_token == ""
    return ids


def cli_json(server: ServerProcess, *args: str) -> dict:
    result = cli(server, "--json", "sets", "--model-type", "a", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ids_of(document: dict) -> list[int]:
    return [s["id"] for s in document["prediction_sets"]]


def test_library_pages_and_iterators(server: ServerProcess, newest_first: list[int]) -> None:
    with server.client() as client:
        first = client.list_prediction_sets("a", page_size=7)
        second = client.list_prediction_sets("a", page_size=7, page_token=first.next_page_token)
        assert [s.id for s in [*first.prediction_sets, *second.prediction_sets]] == newest_first[:14]
        assert [s.id for s in client.iter_prediction_sets("a", page_size=7)] == newest_first
        assert [s.id for s in client.iter_prediction_sets("a", page_token=first.next_page_token)] == newest_first[7:]

        current = [s.id for s in client.iter_prediction_sets("a", current_only=True)]
        assert current == [newest_first[0]]
        kept = list(client.iter_prediction_sets("a", page_size=4, exclude_archived=True))
        assert len(kept) == SETS // 2 and not any(s.archived_at for s in kept)
        after = START + dt.timedelta(hours=50)  # strictly after: hours 51..59
        assert [s.id for s in client.iter_prediction_sets("a", page_size=4, created_after=after)] == newest_first[:9]
        with pytest.raises(ValueError, match="^created_after 2026-01-03T02:00:00 has no time zone"):
            client.iter_prediction_sets("a", created_after=after.replace(tzinfo=None))

    async def walk() -> list[int]:
        async with AsyncPredserveClient(server.target) as client:
            return [s.id async for s in client.iter_prediction_sets("a", page_size=9)]

    assert asyncio.run(walk()) == newest_first


def test_one_page_by_default_with_a_hint_then_limit_and_all(server: ServerProcess, newest_first: list[int]) -> None:
    table = cli(server, "sets", "--model-type", "a")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["id", "current"] and lines[-1] == f"{DEFAULT_PAGE} {HINT}"
    assert [int(line.split()[0]) for line in lines[2:-1]] == newest_first[:DEFAULT_PAGE]

    page = cli_json(server)
    assert ids_of(page) == newest_first[:DEFAULT_PAGE] and page["next_page_token"]

    limited = cli_json(server, "--limit", "7")
    assert ids_of(limited) == newest_first[:7] and limited["next_page_token"]
    # The token continues right after the last set shown.
    following = cli_json(server, "--limit", "7", "--page-token", limited["next_page_token"])
    assert ids_of(following) == newest_first[7:14]
    assert cli(server, "sets", "--model-type", "a", "--limit", "3").stdout.strip().endswith(f"3 {HINT}")

    every = cli_json(server, "--all")
    assert ids_of(every) == newest_first and every["next_page_token"] == ""
    assert ids_of(cli_json(server, "--limit", "1000")) == newest_first
    whole = cli(server, "sets", "--model-type", "a", "--all")
    assert whole.returncode == 0 and HINT not in whole.stdout and len(whole.stdout.splitlines()) == SETS + 2


def test_filters(server: ServerProcess, newest_first: list[int]) -> None:
    current = cli_json(server, "--current-only")
    assert ids_of(current) == [newest_first[0]] and current["prediction_sets"][0]["is_current"]
    assert current["next_page_token"] == ""
    kept = cli_json(server, "--exclude-archived", "--all")["prediction_sets"]
    assert len(kept) == SETS // 2 and not any(s["archived_at"] for s in kept)
    for time in ("2026-01-03T02:00:00Z", "2026-01-03T02:00:00", "2026-01-03T03:00:00+01:00"):  # hour 50
        assert ids_of(cli_json(server, "--created-after", time)) == newest_first[:9], time
    # Hours 51..59 without the even ones, which are archived.
    kept_after = cli_json(server, "--created-after", "2026-01-03T02:00:00Z", "--exclude-archived")
    assert ids_of(kept_after) == newest_first[0:9:2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "predserve: --limit 0: list at least 1 set, or every one with --all"),
        (["--limit", "-3"], "predserve: --limit -3: list at least 1 set, or every one with --all"),
        (
            ["--created-after", "yesterday"],
            "predserve: --created-after 'yesterday' is not an ISO-8601 time, such as 2026-01-05T12:00:00Z",
        ),
        (
            ["--current-only", "--page-token", "bm90IGEgdG9rZW4"],
            "predserve: INVALID_ARGUMENT: page_token is not one this server gave: send the next_page_token of the "
            "previous page as it came, or none for the first page",
        ),
    ],
    ids=["limit-0", "limit-negative", "bad-time", "bad-token"],
)
def test_bad_values_print_one_line_and_exit_1(server: ServerProcess, args: list[str], message: str) -> None:
    result = cli(server, "sets", "--model-type", "a", *args)
    assert (result.returncode, result.stderr.strip(), result.stdout) == (1, message, "")


def test_limit_and_all_together_are_a_usage_error(server: ServerProcess) -> None:
    result = cli(server, "sets", "--model-type", "a", "--limit", "3", "--all")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr and "Traceback" not in result.stderr
