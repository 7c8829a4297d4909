"""A throw-away PostgreSQL cluster for the tests and the replica benchmark.

initdb in a temporary directory, listening on 127.0.0.1 only (and on a unix socket inside that
directory), password authentication, no fsync (nothing here must survive the machine), removed
on stop. PostgreSQL refuses to run as root, so under root the cluster runs as the `postgres` user
that the distribution's package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

SUPERUSER = "predserve"
START_ATTEMPTS = 8


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $PREDSERVE_POSTGRES_BIN, pg_config, Debian's layout, or PATH."""
    candidates = [os.environ.get("PREDSERVE_POSTGRES_BIN", "")]
    pg_config = shutil.which("pg_config")
    if pg_config:
        completed = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(completed.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


def _major_version(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


class Databases:
    """One empty database per test, created and dropped through the superuser URL."""

    url: str

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return urlsplit(self.url)._replace(path=f"/{name}").geturl()

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


class PostgresCluster(Databases):
    def __init__(self, bindir: Path, max_connections: int = 200, durable: bool = False) -> None:
        self.bindir = bindir
        self.max_connections = max_connections
        # Off by default, for speed: a crash (kill) may then lose commits a client was told of.
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="predserve-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        self._settings = ""
        self._run_as: list[str] = []

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresCluster:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")  # created by the postgresql package
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o700)
        password_file = self.root / "password"
        password_file.write_text(self.password)
        if self._run_as:
            os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(
            [
                "initdb",
                "--pgdata",
                str(self.data),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(password_file),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-sync",
            ]
        )
        password_file.unlink()
        # PostgreSQL cannot be asked for "any free port"; try random ones until one binds.
        for _ in range(START_ATTEMPTS):
            self.port = random.randint(20000, 60000)
            settings = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                + ("" if self.durable else "-c fsync=off -c full_page_writes=off -c synchronous_commit=off ")
                + f"-c max_connections={self.max_connections}"
            )
            started = self._pg_ctl_start(settings)
            if started.returncode == 0:
                self._settings = settings
                return self
            if "already in use" not in self.log():
                break
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log()}")

    def _pg_ctl_start(self, settings: str) -> subprocess.CompletedProcess[str]:
        command = ["pg_ctl", "--pgdata", str(self.data), "--log", str(self.log_path), "--wait", "--timeout", "60"]
        return self._run([*command, "--options", settings, "start"], check=False)

    def pause(self) -> None:
        """Stops the server as an outage would (fast: every connection is cut), keeping its data and port."""
        self._run(["pg_ctl", "--pgdata", str(self.data), "--mode", "fast", "--wait", "stop"])

    def resume(self) -> None:
        """Starts the paused server again, on the same port; returns once it accepts connections."""
        started = self._pg_ctl_start(self._settings)
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start again:\n{self.log()}")

    def freeze(self) -> None:
        """SIGSTOP to the server and every process of it, as a frozen VM or a partition: sockets stay open, the
        kernel keeps accepting connections, and nothing answers."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL to the server and every process of it, as a crash; resume() starts it again."""
        pids = self._processes()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Reparented to a process that may never reap it, the dead postmaster can stay a zombie whose pid
        # PostgreSQL would take for a live server: its lock file goes, as an operator would remove it.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.root.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)

    def thaw(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def _processes(self) -> list[int]:
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _parent_of(entry) == postmaster
        ]
        return [postmaster, *children]

    def stop(self) -> None:
        try:
            self.thaw()  # a frozen server would not act on pg_ctl's signal
        except (OSError, ValueError):  # not running
            pass
        if self.port:
            self._run(["pg_ctl", "--pgdata", str(self.data), "--mode", "immediate", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _run(self, command: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = str(self.bindir / command[0])
        completed = subprocess.run(
            [*self._run_as, binary, *command[1:]], capture_output=True, text=True, check=False, cwd=self.root
        )
        if check and completed.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}")
        return completed


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _parent_of(proc_entry: Path) -> int | None:
    try:
        return int((proc_entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):  # gone meanwhile
        return None


class ExistingCluster(Databases):
    """A PostgreSQL server someone else runs (PREDSERVE_TEST_POSTGRES_URL, a superuser's URL)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def stop(self) -> None:
        pass
