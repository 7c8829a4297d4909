"""The server's settings: one frozen dataclass, whose defaults are the options' defaults.

server/options.py declares how each field is set (flag, environment variable, reader, range, documentation),
and server/config.py builds it from the command line and the environment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from predserve.server.domain import RuntimeChoice, VersionPolicy
from predserve.server.observability.logs import LogFormat, LogLevel
from predserve.server.storage.postgres import DEFAULT_POOL_SIZE
from predserve.server.storage.postgres_liveness import DEFAULT_REGISTRY_TIMEOUT_SECONDS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS_DIR = PROJECT_ROOT / "db" / "migrations"


@dataclass(frozen=True)
class ServerConfig:
    """What each field means is its option's documentation, in server/options.py (OPTIONS), declared once there;
    a comment here says why a default is what it is, or documents a field that no option sets."""

    host: str = "127.0.0.1"
    port: int = 50051
    db_path: Path = PROJECT_ROOT / "db" / "predictions.db"
    # A postgresql:// URL (the registry several replicas share) replaces db_path. It may hold a password,
    # so it stays out of repr() and the logs show it redacted.
    database_url: str | None = field(default=None, repr=False)
    models_dir: Path = PROJECT_ROOT / "models"
    artifact_store: str | None = None
    cache_max_bytes: int = 0
    store_timeout_seconds: float = 10.0
    store_retries: int = 2
    fetch_concurrency: int = 8
    migrations_dir: Path = MIGRATIONS_DIR
    port_file: Path | None = None
    version_policy: VersionPolicy = VersionPolicy.WARN
    strict: bool = False
    integrity_check: bool = True
    allow_empty_registry: bool = False
    max_message_bytes: int = 64 * 1024 * 1024
    max_rows_per_request: int = 100_000
    max_concurrent_rpcs: int = 64
    # IngestHistory and ImportModel streams open at once, each holding a thread while it waits for its messages:
    # 8 lets several clients upload batches side by side (more would mostly wait on the database's writes) and
    # is all that idle streams can hold; Predict and health have threads of their own (server/api/admitting.py).
    max_concurrent_streams: int = 8
    max_concurrent_trains: int = 2
    stream_idle_seconds: float = 30.0
    fit_jobs: int = 1
    train_deadline_seconds: float = 600.0
    busy_timeout_seconds: float = 5.0
    grace_seconds: float = 30.0
    reload_interval_seconds: float = 2.0
    workers: int = 1
    import_timeout_seconds: float = 60.0
    # Secrets come from the environment or files only, never from flags (the process list shows flags),
    # and stay out of repr() so that logging the config cannot leak them.
    admin_token: str | None = field(default=None, repr=False)
    predict_token: str | None = field(default=None, repr=False)
    artifact_hmac_key: bytes | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    batch_max_rows: int = 256
    batch_max_wait_ms: float = 2.0
    trusted_modules: tuple[str, ...] = ()
    # 4: 3 replicas of 2 workers then hold 30 of PostgreSQL's default 100 connections, one more each to LISTEN.
    db_pool_size: int = DEFAULT_POOL_SIZE
    registry_timeout_seconds: float = DEFAULT_REGISTRY_TIMEOUT_SECONDS
    runtime: RuntimeChoice = RuntimeChoice.AUTO
    runtime_tolerance: float = 1e-9
    metrics_port: int = 0
    metrics_host: str | None = None
    metrics_dir: Path | None = None
    log_format: LogFormat = LogFormat.TEXT
    log_level: LogLevel = LogLevel.INFO
    access_log: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def metrics_address(self) -> str:
        return self.metrics_host or self.host

    @property
    def binds_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # any other host name may resolve to a routable address
            return False
