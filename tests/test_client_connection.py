"""One client, one connection: every call of a client reuses its channel's one TCP connection to the server,
and closing the client (close(), `with`, `async with`) closes it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness.waiting import wait_until
from predserve.client import AsyncPredserveClient, PredserveClient
from tests.support import ServerProcess

CALLS = 30
ESTABLISHED = "01"


def connections_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:port on this machine (the server's port is its own)."""
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == ESTABLISHED:
                count += 1
    return count


def test_the_sync_client_reuses_one_connection_and_closes_it(server: ServerProcess) -> None:
    assert connections_to(server.port) == 0
    with PredserveClient(server.target) as client:
        for _ in range(CALLS):
            assert client.health() == "SERVING"
            client.list_models()
        assert connections_to(server.port) == 1
    wait_until(lambda: connections_to(server.port) == 0, 10, "the closed client's connection to go")


def test_the_async_client_reuses_one_connection_and_closes_it(server: ServerProcess) -> None:
    async def scenario() -> int:
        async with AsyncPredserveClient(server.target) as client:
            answers = await asyncio.gather(*(client.health() for _ in range(CALLS)))
            assert answers == ["SERVING"] * CALLS
            await client.list_models()
            return connections_to(server.port)

    assert asyncio.run(scenario()) == 1
    wait_until(lambda: connections_to(server.port) == 0, 10, "the closed client's connection to go")
