"""Server configuration: one frozen dataclass built from flags, environment and defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS_DIR = PROJECT_ROOT / "db" / "migrations"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    db_path: Path = PROJECT_ROOT / "db" / "predictions.db"
    models_dir: Path = PROJECT_ROOT / "models"
    migrations_dir: Path = MIGRATIONS_DIR
    # Where to write the bound port once serving; lets tests and scripts ask for port 0.
    port_file: Path | None = None
    version_policy: str = "warn"
    strict: bool = False
    max_workers: int = 16
    max_message_bytes: int = 64 * 1024 * 1024
    busy_timeout_seconds: float = 5.0
    grace_seconds: float = 30.0
    # How often to look for a current set changed by another process; 0 turns live reload off.
    reload_interval_seconds: float = 2.0
    workers: int = 1
    import_timeout_seconds: float = 60.0
    # Most rows one batched predict call may answer (server/services/batching.py); 0 turns batching off.
    batch_max_rows: int = 256
    # How long a batch may wait for the callers the previous batch answered to come back (adaptive: never alone).
    batch_max_wait_ms: float = 2.0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    env = os.environ if env is None else env
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="predserve-server",
        description="Serve predictions from persisted scikit-learn pipelines over gRPC.",
    )
    parser.add_argument(
        "--host",
        default=env.get("PREDSERVE_HOST", defaults.host),
        help="address to bind (env PREDSERVE_HOST; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("PREDSERVE_PORT", defaults.port)),
        help="port to bind, 0 for any free one (env PREDSERVE_PORT; default 50051)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path(env.get("PREDSERVE_DB", defaults.db_path)),
        help="SQLite database file (env PREDSERVE_DB; default db/predictions.db)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(env.get("PREDSERVE_MODELS_DIR", defaults.models_dir)),
        help="directory of joblib artifacts (env PREDSERVE_MODELS_DIR; default models/)",
    )
    parser.add_argument(
        "--port-file", type=Path, default=None, help="write the bound port to this file once the server is ready"
    )
    parser.add_argument(
        "--version-policy",
        choices=("warn", "refuse"),
        default=env.get("PREDSERVE_VERSION_POLICY", defaults.version_policy),
        help="what to do with an artifact trained under other library versions",
    )
    parser.add_argument(
        "--strict", action="store_true", help="refuse to start when any current artifact cannot be served"
    )
    parser.add_argument("--max-workers", type=int, default=defaults.max_workers, help="threads answering RPCs")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=defaults.grace_seconds,
        help="how long in-flight calls may run on after SIGTERM",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=float(env.get("PREDSERVE_RELOAD_INTERVAL", defaults.reload_interval_seconds)),
        help="seconds between checks for a current set changed by another process (0: off)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env.get("PREDSERVE_WORKERS", defaults.workers)),
        help="serving processes sharing the port (SO_REUSEPORT), forked after models are loaded",
    )
    parser.add_argument("--import-timeout", type=float, default=defaults.import_timeout_seconds,
                        help="seconds an imported artifact may take to load in its probe process")
    parser.add_argument(
        "--batch-max-rows",
        type=int,
        default=int(env.get("PREDSERVE_BATCH_MAX_ROWS", defaults.batch_max_rows)),
        help="answer concurrent Predict calls of a tree-based model with one predict of up to this many rows "
        "(env PREDSERVE_BATCH_MAX_ROWS; 0: off)",
    )
    parser.add_argument(
        "--batch-max-wait-ms",
        type=float,
        default=float(env.get("PREDSERVE_BATCH_MAX_WAIT_MS", defaults.batch_max_wait_ms)),
        help="under load, how long a batch may wait for the callers of the previous one (default 2; 0: never)",
    )
    args = parser.parse_args(argv)
    if args.batch_max_rows < 0:
        parser.error("--batch-max-rows must be 0 or more")
    if args.batch_max_wait_ms < 0:
        parser.error("--batch-max-wait-ms must be 0 or more")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return ServerConfig(
        host=args.host,
        port=args.port,
        db_path=args.db,
        models_dir=args.models_dir,
        port_file=args.port_file,
        version_policy=args.version_policy,
        strict=args.strict,
        max_workers=args.max_workers,
        grace_seconds=args.grace_seconds,
        reload_interval_seconds=args.reload_interval,
        workers=args.workers,
        import_timeout_seconds=args.import_timeout,
        batch_max_rows=args.batch_max_rows,
        batch_max_wait_ms=args.batch_max_wait_ms,
    )
