"""Start predserve as a child process on a loopback port and wait until it serves.

Used by the tests, the restart story and the benchmark, which all need the real server process,
really stopped and really killed. It lives beside them, outside `server/`, so the wheel never ships it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

from harness.waiting import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60.0

_Process = TypeVar("_Process", bound="ServerProcess")


class ServerProcess:
    """`python -m server` on 127.0.0.1 with its own database (SQLite file or PostgreSQL URL) and models directory."""

    def __init__(
        self,
        workdir: Path,
        db: Path | str | None = None,
        models_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        port: int = 0,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.db = db or workdir / "predictions.db"
        self.models_dir = models_dir or workdir / "models"
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.port = port
        # Runs in the child between fork and exec: resource limits, dropped privileges.
        self.preexec = preexec
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self: _Process, wait: bool = True) -> _Process:
        port_file = self.workdir / "server.port"
        port_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "predserve.server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--port-file",
            str(port_file),
            "--db",
            str(self.db),
            "--models-dir",
            str(self.models_dir),
            *self.extra_args,
        ]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            preexec_fn=self.preexec,
        )
        if wait:
            self._wait_for_port(port_file)
        return self

    def _wait_for_port(self, port_file: Path) -> None:
        def written_port() -> int | None:
            if port_file.exists():
                return int(port_file.read_text())
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            return None

        try:
            self.port = wait_until(written_port, STARTUP_TIMEOUT, f"the server to write its port to {port_file}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; its log:\n{self.log()}") from None

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Until `text` appears in the server's log; on a timeout the error carries the whole log."""
        try:
            wait_until(lambda: text in self.log(), timeout, f"{text!r} in the server log")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; the log:\n{self.log()}") from None

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the graceful exit."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._close_log()
        return code

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
