"""MLServer, the peer: its own virtual environment under bench/, serving predserve's very joblib artifacts.

The environment pins the same scikit-learn, numpy and joblib as predserve's, so both servers unpickle the
same files into the same objects. Two set-ups are measured: MLServer's defaults (one inference worker
process) and "in-process" (parallel_workers=0, debug and access logs off), its fastest here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from harness.ports import free_port

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
VENV = BENCH_DIR / ".venv-mlserver"
MLSERVER_VERSION = "1.7.1"
SETUPS = {
    "mlserver_default": {},
    "mlserver_inprocess": {"parallel_workers": 0, "debug": False},
}


def ensure_venv() -> Path:
    """Creates bench/.venv-mlserver once (pip, from the package index); returns its mlserver executable."""
    executable = VENV / "bin" / "mlserver"
    stamp = VENV / ".installed"
    pins = [
        f"mlserver=={MLSERVER_VERSION}",
        f"mlserver-sklearn=={MLSERVER_VERSION}",
        *(f"{name}=={metadata.version(name)}" for name in ("scikit-learn", "numpy", "joblib", "scipy")),
        # uvloop 0.22 and later refuse asyncio.get_event_loop() without a running loop, which MLServer 1.7.1's
        # inference worker calls at start: the worker dies and every model fails to load.
        "uvloop==0.21.0",
    ]
    if stamp.exists() and stamp.read_text() == "\n".join(pins):
        return executable
    logger.info("installing MLServer into %s: %s", VENV, " ".join(pins))
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *pins], check=True)
    stamp.write_text("\n".join(pins))
    return executable


def write_repository(root: Path, artifacts: dict[str, Path], setup: str, grpc_port: int) -> Path:
    """A model repository: settings.json for the server, one folder with model-settings.json per model."""
    repository = root / setup
    repository.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(repository / ".metrics"),
        **SETUPS[setup],
    }
    (repository / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, path in artifacts.items():
        folder = repository / name
        folder.mkdir(exist_ok=True)
        model_settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(path.resolve())},
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return repository


class MLServerProcess:
    def __init__(self, executable: Path, root: Path, artifacts: dict[str, Path], setup: str) -> None:
        self.executable = executable
        self.setup = setup
        self.port = free_port()  # refused if busy: MLServer's gRPC server would share it (SO_REUSEPORT)
        self.repository = write_repository(root, artifacts, setup, self.port)
        self.log_path = self.repository / "mlserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> subprocess.Popen[bytes]:
        free_port(port=self.port)
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [str(self.executable), "start", str(self.repository)],
            cwd=self.repository,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        return self.process

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        # Its inference worker processes share its session; none may outlive it and keep a port.
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
