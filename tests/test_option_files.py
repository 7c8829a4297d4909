"""Options never destroy what they did not create (issue 22): --metrics-dir is wiped of metric files only, and
refused when it is another option's data or holds another program's files; --port-file never replaces a file
it did not write; the models directory's start-up sweep leaves what predserve did not name. Real servers
refuse in one line with status 2 and leave every byte where it was."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.metrics import metrics_url, samples, scrape, server_with_metrics
from harness.ports import free_port
from predserve.server.observability.metrics import METRICS_FILE
from predserve.server.preflight import StartupCheckFailed, check_startup
from predserve.server.settings import ServerConfig
from predserve.server.storage.artifacts import ArtifactStore
from tests.support import ServerProcess, iris_rows

IRIS = "iris_classifier"


def one_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in log, log
    return lines[0]


def refusal(server: ServerProcess) -> str:
    """The one line of a start that must stop at its checks; a server that starts anyway is killed."""
    server.start(wait=False)
    try:
        code = server.wait_exit(timeout=60)
    finally:
        server.kill()
    assert code == 2, server.log()
    line = one_line(server.log())
    assert line.startswith("predserve-server: error: ")
    return line


def contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir laid out like the defaults (db/predictions.db, models/) whose registry holds history rows
    and a current prediction set, written by a real server that has stopped."""
    workdir = tmp_path_factory.mktemp("trained")
    first = ServerProcess(workdir, db=workdir / "db" / "predictions.db", models_dir=workdir / "models").start()
    with first.client() as client:
        names, rows = iris_rows()
        client.ingest("iris", rows, names)
        client.train(IRIS, dataset="iris", algorithm="logistic_regression")
    assert first.stop() == 0
    return workdir


@pytest.fixture
def registry(trained: Path, tmp_path: Path) -> Path:
    """A copy of `trained`'s database and models directory, for a test to point options at."""
    for name in ("db", "models"):
        shutil.copytree(trained / name, tmp_path / name)
    return tmp_path


def server_beside(workdir: Path, name: str, *extra_args: str) -> ServerProcess:
    (workdir / name).mkdir()
    return ServerProcess(
        workdir / name, db=workdir / "db" / "predictions.db", models_dir=workdir / "models", extra_args=extra_args
    )


def test_a_metrics_dir_that_holds_the_database_is_refused_and_the_registry_kept(registry: Path) -> None:
    before = contents(registry / "db")
    assert "predictions.db" in before
    server = server_beside(
        registry, "second", "--metrics-port", str(free_port()), "--metrics-dir", str(registry / "db")
    )
    line = refusal(server)
    assert f"--metrics-dir {registry / 'db'} holds the --db file {registry / 'db' / 'predictions.db'}" in line
    assert contents(registry / "db") == before
    third = server_beside(registry, "third").start()
    try:
        with third.client() as client:
            assert [(m.model_type, m.prediction_set_id) for m in client.list_models().models] == [(IRIS, 1)]
    finally:
        assert third.stop() == 0


def test_a_port_file_that_is_the_database_is_refused_and_the_registry_kept(registry: Path) -> None:
    before = contents(registry / "db")
    server = server_beside(registry, "second", "--port-file", str(registry / "db" / "predictions.db"))
    assert "is the --db file" in refusal(server)
    assert contents(registry / "db") == before


def test_a_metrics_dir_naming_a_file_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    server = ServerProcess(tmp_path, extra_args=["--metrics-port", str(free_port()), "--metrics-dir", str(notes)])
    assert refusal(server).endswith(f"--metrics-dir {notes} is not a directory")
    assert notes.read_text() == "mine"
    assert not (tmp_path / "predictions.db").exists()


def test_a_metrics_dir_holding_a_foreign_file_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "shared"
    metrics_dir.mkdir()
    (metrics_dir / "cache.db").write_bytes(b"another program's database")
    (metrics_dir / f"counter_{dead_pid()}.db").write_bytes(b"")
    server = ServerProcess(tmp_path, extra_args=["--metrics-port", str(free_port()), "--metrics-dir", str(metrics_dir)])
    line = refusal(server)
    assert f"--metrics-dir {metrics_dir} holds cache.db, which prometheus-client did not write" in line
    assert (metrics_dir / "cache.db").read_bytes() == b"another program's database"
    assert len(list(metrics_dir.iterdir())) == 2


def test_a_metrics_dir_in_use_by_a_running_process_is_refused(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    live = metrics_dir / f"gauge_livesum_{os.getpid()}.db"  # this test's process: running, and not the server
    live.write_bytes(b"live values")
    server = ServerProcess(tmp_path, extra_args=["--metrics-port", str(free_port()), "--metrics-dir", str(metrics_dir)])
    assert f"is in use: process {os.getpid()}, still running, writes its {live.name}" in refusal(server)
    assert live.read_bytes() == b"live values"


def test_a_metrics_dir_is_wiped_of_a_dead_process_files_and_serves(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    gone = dead_pid()
    stale = [metrics_dir / f"{kind}_{gone}.db" for kind in ("counter", "histogram", "gauge_livesum", "gauge_all")]
    for path in stale:
        path.write_bytes(b"a previous run's leftovers")  # unreadable as values: a scrape fails unless removed
    with server_with_metrics(ServerProcess, tmp_path, ["--metrics-dir", str(metrics_dir)]) as (server, port):
        assert not [path for path in stale if path.exists()]
        found = samples(scrape(metrics_url(port)))
        assert found[("predserve_batch_calls_count", frozenset())] == 0 and found[("process_open_fds", frozenset())]
        written = [path.name for path in metrics_dir.iterdir()]
        assert written and all(METRICS_FILE.fullmatch(name) for name in written)
    assert server.process is not None and server.process.returncode == 0


# Unit level: the check's every refusal, without a server.


def config_in(tmp_path: Path, **changes: object) -> ServerConfig:
    values: dict[str, object] = {"db_path": tmp_path / "db" / "x.db", "models_dir": tmp_path / "m", "metrics_port": 9}
    return ServerConfig(**{**values, **changes})  # type: ignore[arg-type]


def failure(config: ServerConfig) -> str:
    with pytest.raises(StartupCheckFailed) as failed:
        check_startup(config)
    return str(failed.value)


def test_a_metrics_dir_of_its_own_passes_and_nothing_is_created(tmp_path: Path) -> None:
    check_startup(config_in(tmp_path, metrics_dir=tmp_path / "new" / "metrics"))
    existing = tmp_path / "metrics"
    existing.mkdir()
    check_startup(config_in(tmp_path, metrics_dir=existing))
    (existing / f"histogram_{dead_pid()}.db").write_bytes(b"")
    check_startup(config_in(tmp_path, metrics_dir=existing))
    # Beside the database, in a directory of its own, is fine.
    check_startup(config_in(tmp_path, metrics_dir=tmp_path / "db" / "metrics"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics"]


def test_each_metrics_dir_that_is_another_option_s_data_is_named(tmp_path: Path) -> None:
    db, models = tmp_path / "db" / "x.db", tmp_path / "m"
    assert failure(config_in(tmp_path, metrics_dir=tmp_path / "db")) == (
        f"--metrics-dir {tmp_path / 'db'} holds the --db file {db}; it is wiped at start: give it a directory of "
        "its own"
    )
    assert failure(config_in(tmp_path, metrics_dir=tmp_path)).startswith(f"--metrics-dir {tmp_path} holds the")
    assert failure(config_in(tmp_path, metrics_dir=db)).startswith(f"--metrics-dir {db} is the --db file {db};")
    assert failure(config_in(tmp_path, metrics_dir=models)).startswith(f"--metrics-dir {models} is the --models-dir")
    assert failure(config_in(tmp_path, metrics_dir=models / "metrics")) == (
        f"--metrics-dir {models / 'metrics'} is inside the --models-dir {models}"
    )
    port_file = tmp_path / "run" / "port"
    port_file.parent.mkdir()
    assert failure(config_in(tmp_path, metrics_dir=tmp_path / "run", port_file=port_file)).startswith(
        f"--metrics-dir {tmp_path / 'run'} holds the --port-file {port_file};"
    )
    # Through a symlink too.
    (tmp_path / "link").symlink_to(tmp_path / "db", target_is_directory=True)
    (tmp_path / "db").mkdir()
    assert "holds the --db file" in failure(config_in(tmp_path, metrics_dir=tmp_path / "link"))


def test_each_metrics_dir_with_other_files_is_named(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db.bak").write_bytes(b"")
    (metrics_dir / "sub").mkdir()
    (metrics_dir / f"counter_{dead_pid()}.db").symlink_to(tmp_path / "elsewhere.db")
    (metrics_dir / "a.txt").write_text("x")
    names = sorted(p.name for p in metrics_dir.iterdir())
    assert failure(config_in(tmp_path, metrics_dir=metrics_dir)) == (
        f"--metrics-dir {metrics_dir} holds {', '.join(names[:3])} and 1 more, which prometheus-client did not "
        "write; it is wiped at start: give it an empty directory of its own"
    )
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert failure(config_in(tmp_path, metrics_dir=a_file)) == f"--metrics-dir {a_file} is not a directory"
    assert failure(config_in(tmp_path, metrics_dir=a_file / "metrics")) == (
        f"--metrics-dir {a_file / 'metrics'} cannot be created: {a_file} is not a directory"
    )


def test_a_running_writer_matters_only_to_a_server_that_serves_metrics(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as sleeper:
        try:
            (metrics_dir / f"counter_{sleeper.pid}.db").write_bytes(b"")
            assert failure(config_in(tmp_path, metrics_dir=metrics_dir)) == (
                f"--metrics-dir {metrics_dir} is in use: process {sleeper.pid}, still running, writes its "
                f"counter_{sleeper.pid}.db; give each server a directory of its own"
            )
            check_startup(config_in(tmp_path, metrics_dir=metrics_dir, metrics_port=0))
        finally:
            sleeper.kill()


def test_the_pattern_names_every_file_prometheus_client_writes_and_nothing_else(tmp_path: Path) -> None:
    """A process in multiprocess mode makes a metric of every type and gauge mode; the pattern must match
    exactly the files it leaves, so that the check refuses none of them and the wipe leaves none."""
    script = textwrap.dedent(
        """
        from prometheus_client import Counter, Gauge, Histogram, Summary
        Counter("c", "c").inc()
        Histogram("h", "h").observe(1)
        Summary("s", "s").observe(1)
        for mode in sorted(Gauge._MULTIPROC_MODES):
            Gauge(f"g_{mode}", "g", multiprocess_mode=mode).set(1)
        """
    )
    subprocess.run(
        [sys.executable, "-c", script], check=True, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    )
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == 13 and all(METRICS_FILE.fullmatch(name) for name in written), written
    for other in ("predictions.db", "counter_.db", "counter_12.db-wal", "info_12.db", "gauge_12.db", "x_counter_1.db"):
        assert not METRICS_FILE.fullmatch(other)


def test_a_port_file_is_replaced_only_when_it_holds_a_port(tmp_path: Path) -> None:
    port_file = tmp_path / "server.port"
    check_startup(config_in(tmp_path, port_file=port_file))
    for held in ("", "50051\n"):
        port_file.write_text(held)
        check_startup(config_in(tmp_path, port_file=port_file))
    port_file.write_text("-----BEGIN PRIVATE KEY-----\n")
    assert failure(config_in(tmp_path, port_file=port_file)) == (
        f"--port-file {port_file} holds something else than a port number, and would be replaced by one"
    )
    assert failure(config_in(tmp_path, port_file=tmp_path)) == f"--port-file {tmp_path} is a directory"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert failure(config_in(tmp_path, port_file=fifo)) == f"--port-file {fifo} is not a regular file"
    missing = tmp_path / "missing" / "server.port"
    assert failure(config_in(tmp_path, port_file=missing)) == (
        f"--port-file {missing} cannot be written: {missing.parent} is not a directory"
    )
    db = tmp_path / "db" / "x.db"
    assert failure(config_in(tmp_path, port_file=db)) == f"--port-file {db} is the --db file"


def test_writing_the_port_file_replaces_nothing_beside_it(tmp_path: Path) -> None:
    beside = tmp_path / "server.tmp"  # what with_suffix(".tmp") of server.port would have overwritten
    beside.write_text("someone's")
    server = ServerProcess(tmp_path).start()
    try:
        assert (tmp_path / "server.port").read_text() == str(server.port)
    finally:
        server.stop()
    assert beside.read_text() == "someone's"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".server.port")) == []


def test_the_models_sweep_removes_only_what_predserve_named(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / ".tmp").mkdir(parents=True)
    gone = dead_pid()
    theirs = [models / ".tmp-notes", models / ".tmp" / "notes.txt"]
    ours = [
        models / f".tmp-{gone}@{socket.gethostname()}~iris-20260101T000000Z-0123456789ab.joblib",
        models / ".tmp-iris-20260101T000000Z-0123456789ab.joblib",  # named before writers named themselves
        models / ".tmp" / f"{gone}@{socket.gethostname()}~0123456789abcdef.joblib",
    ]
    for path in theirs + ours:
        path.write_bytes(b"x")
    ArtifactStore(models).prepare()
    assert [path for path in theirs if path.exists()] == theirs
    assert not [path for path in ours if path.exists()]
