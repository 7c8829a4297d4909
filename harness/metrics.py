"""A real server's Prometheus endpoint as the tests and scripts read it: started with two workers on a free
loopback port, scraped over HTTP, and parsed into samples.

The observability tests, the real-Prometheus test and the dashboard script all need exactly this, so it is
written once here rather than once in each of them.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from harness.launcher import ServerProcess

# The benchmark's probe, so that the repository has one way of finding a free port.
from harness.ports import free_port

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_ATTEMPTS = 3  # a port found free can be taken before the server binds it
SCRAPE_TIMEOUT = 10.0

# A sample's name and its labels: what tells one series from another in a scrape.
SeriesKey = tuple[str, frozenset[tuple[str, str]]]

_Server = TypeVar("_Server", bound=ServerProcess)


def metrics_url(port: int, host: str = LOOPBACK) -> str:
    return f"http://{host}:{port}/metrics"


def scrape(url: str) -> str:
    """The text exposition the endpoint answers."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
        return str(response.read().decode())


def samples(text: str) -> dict[SeriesKey, float]:
    """Every sample of a text exposition, by its name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metrics_args(metrics_port: int) -> list[str]:
    # Two workers: a scrape then shows that the one endpoint sums what every process counted.
    return ["--workers", "2", "--metrics-host", LOOPBACK, "--metrics-port", str(metrics_port)]


def start_server_with_metrics(
    server_class: type[_Server],
    workdir: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> tuple[_Server, int]:
    """A started server of `server_class` with its metrics endpoint on a free loopback port, and that port.

    Tries another port when the one found free was taken before the server bound it; any other failure to
    start is raised at once, and no server is left running either way.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        metrics_port = free_port()
        server = server_class(workdir, extra_args=[*metrics_args(metrics_port), *extra_args], env=env)
        try:
            return server.start(), metrics_port
        except (RuntimeError, TimeoutError):
            if server.process is not None and server.process.poll() is None:
                server.kill()  # a start that timed out leaves no server behind
            if attempt == START_ATTEMPTS or "cannot serve metrics" not in server.log():
                raise
            logger.info("metrics port %d was taken meanwhile; trying another", metrics_port)
    raise AssertionError("unreachable")


@contextmanager
def server_with_metrics(
    server_class: type[_Server],
    workdir: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[tuple[_Server, int]]:
    """start_server_with_metrics, stopped gracefully on the way out."""
    server, metrics_port = start_server_with_metrics(server_class, workdir, extra_args, env)
    try:
        yield server, metrics_port
    finally:
        server.stop()
