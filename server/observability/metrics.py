"""--metrics-port: the Prometheus endpoint, and the multiprocess directory behind it.

Every serving process writes its metrics to files of one directory (prometheus-client's multiprocess
mode), and the process that owns the gRPC port serves /metrics from all of them: the one server process,
or with --workers N the supervising parent, which marks a worker dead when it exits so that its gauges
stop counting. The directory is given (--metrics-dir, wiped at start) or a private one made here and
removed at exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from server.observability.telemetry import Telemetry

logger = logging.getLogger(__name__)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# The figures of the whole process tree; the others (start time, fd limit) are the endpoint process's own.
SUMMED_PROCESS_METRICS = frozenset(
    {"process_cpu_seconds", "process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds"}
)


class MetricsEndpoint:
    """Owns the multiprocess directory and the HTTP server, from prepare() to close()."""

    def __init__(self, directory: Path, made_here: bool) -> None:
        self.directory = directory
        self._made_here = made_here
        self._http: Any = None
        self._worker_pids: Callable[[], Iterable[int]] = tuple

    @classmethod
    def prepare(cls, directory: Path | None) -> MetricsEndpoint:
        """Must run before anything imports prometheus_client, which reads the directory at import."""
        if directory is None:
            endpoint = cls(Path(tempfile.mkdtemp(prefix="predserve-metrics-")), made_here=True)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob("*.db"):  # a previous run's values would be summed with ours
                stale.unlink()
            endpoint = cls(directory, made_here=False)
        os.environ[MULTIPROCESS_DIR_VARIABLE] = str(endpoint.directory)
        return endpoint

    def telemetry(self, known_model_type: Callable[[str], bool]) -> Telemetry:
        from server.observability.prometheus import PrometheusTelemetry

        return PrometheusTelemetry(known_model_type)

    def start(self, host: str, port: int, worker_pids: Callable[[], Iterable[int]] = tuple) -> int:
        """Binds host:port and serves /metrics from a thread; raises OSError naming the address if taken."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        self._worker_pids = worker_pids
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))
        registry.register(_ProcessTree(lambda: (os.getpid(), *self._worker_pids())))
        try:
            self._http, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        bound = int(self._http.server_address[1])
        logger.info("metrics on http://%s:%d/metrics", host, bound, extra={"metrics_port": bound, "pid": os.getpid()})
        return bound

    def worker_exited(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.directory))

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._made_here:
            shutil.rmtree(self.directory, ignore_errors=True)


class _ProcessTree:
    """prometheus-client's process_* metrics, summed over the endpoint's process and the live workers:
    its own ProcessCollector sees one process only, and in multiprocess mode only the one serving /metrics."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self.pids = pids

    def collect(self) -> Iterator[Any]:
        from prometheus_client import ProcessCollector

        families: dict[str, Any] = {}
        for pid in self.pids():
            for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
                known = families.get(family.name)
                if known is None:
                    families[family.name] = family
                elif family.name in SUMMED_PROCESS_METRICS:
                    known.samples[0] = known.samples[0]._replace(value=known.samples[0].value + family.samples[0].value)
        yield from families.values()


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid
