"""--metrics-port: the Prometheus endpoint, and the multiprocess directory behind it.

Every serving process writes its metrics to files of one directory (prometheus-client's multiprocess
mode), and the process that owns the gRPC port serves /metrics from all of them: the one server process,
or with --workers N the supervising parent, which marks a worker dead when it exits so that its gauges
stop counting. The directory is given (--metrics-dir, wiped of earlier runs' metric files at start) or a
private one made here and removed at exit.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from predserve.server.observability.telemetry import Telemetry

logger = logging.getLogger(__name__)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# The names prometheus-client's multiprocess mode gives its files (prometheus_client/values.py): "<type>_<pid>.db",
# where a gauge's type also names its mode (Gauge._MULTIPROC_MODES). Spelled out here because prometheus_client
# must not be imported before prepare(); tests/test_option_files.py checks it against the installed one.
METRICS_FILE = re.compile(
    r"(?:counter|histogram|summary|gauge_(?:live)?(?:all|min|max|sum|mostrecent))_(?P<pid>[0-9]+)\.db"
)
# prometheus-client's file header (prometheus_client/mmap_dict.py): bytes used, then padding.
METRICS_FILE_HEADER_BYTES = 8
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
            # check_startup (server/preflight.py) has refused a directory holding anything else than metric
            # files of processes no longer running; whatever appeared since, only those are removed.
            directory.mkdir(parents=True, exist_ok=True)
            for stale in stale_metric_files(directory):  # a previous run's values would be summed with ours
                stale.unlink(missing_ok=True)
            endpoint = cls(directory, made_here=False)
        os.environ[MULTIPROCESS_DIR_VARIABLE] = str(endpoint.directory)
        return endpoint

    def telemetry(self, known_model_type: Callable[[str], bool]) -> Telemetry:
        from predserve.server.observability.prometheus import PrometheusTelemetry

        return PrometheusTelemetry(known_model_type)

    def start(self, host: str, port: int, worker_pids: Callable[[], Iterable[int]] = tuple) -> int:
        """Binds host:port and serves /metrics from a thread; raises OSError naming the address if taken."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        self._worker_pids = worker_pids
        registry = CollectorRegistry()
        registry.register(_settled_files_collector(MultiProcessCollector, self.directory))
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


def _settled_files_collector(base: Any, directory: Path) -> Any:
    """prometheus-client's multiprocess collector, reading only files a worker has finished creating.

    A worker creates its file empty and then sizes it; a scrape that reads it in between fails on the
    missing header, and the whole scrape answers 500 (seen when a replacement worker started). A file
    shorter than its 8-byte header holds no value yet, so leaving it out of this scrape loses nothing.
    """

    class SettledFilesCollector(base):  # type: ignore[misc, valid-type]
        def collect(self) -> Any:
            return self.merge([str(path) for path in directory.glob("*.db") if _has_header(path)], accumulate=True)

    return SettledFilesCollector(None, path=str(directory))


def _has_header(path: Path) -> bool:
    try:
        return path.stat().st_size >= METRICS_FILE_HEADER_BYTES
    except FileNotFoundError:  # a dead worker's live gauges, removed since the glob
        return False


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


# A --metrics-dir is predserve's to wipe when everything in it is a metric file (or it is empty, or missing):
# the wipe can then only ever remove metric values of earlier runs, never a database, an artifact or another
# program's file, whoever made the directory. No marker file is needed for that, and a directory of an
# earlier version, which has none, stays usable. Files of a process still running are another server's (two
# servers given one directory) and are refused too, since removing them would empty its /metrics.


def metrics_file_pid(name: str) -> int | None:
    """The process that wrote a multiprocess metric file of this name; None for any other name."""
    match = METRICS_FILE.fullmatch(name)
    return int(match["pid"]) if match else None


def foreign_entries(directory: Path) -> list[str]:
    """The names in `directory` that are not metric files: any other name, and a symlink or a directory
    under a metric file's name (prometheus-client would write through the link)."""
    with os.scandir(directory) as entries:
        return sorted(
            entry.name
            for entry in entries
            if metrics_file_pid(entry.name) is None or not entry.is_file(follow_symlinks=False)
        )


def running_writers(directory: Path) -> list[tuple[str, int]]:
    """The metric files of `directory` written by a process still running (other than this one), and its pid."""
    with os.scandir(directory) as entries:
        found = [(entry.name, metrics_file_pid(entry.name)) for entry in entries]
    return sorted((name, pid) for name, pid in found if pid is not None and _running(pid))


def stale_metric_files(directory: Path) -> list[Path]:
    """The metric files of `directory` that no running process (other than this one) writes."""
    with os.scandir(directory) as entries:
        return [
            Path(entry.path)
            for entry in entries
            if (pid := metrics_file_pid(entry.name)) is not None
            and entry.is_file(follow_symlinks=False)
            and not _running(pid)
        ]


def _running(pid: int) -> bool:
    """Whether another process of that pid runs on this host. This process's own pid is a previous run's
    (a restarted container gets the same pids again), and pid 0 would name the process group."""
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True
