"""The server's settings: one frozen dataclass, whose defaults are the options' defaults.

server/config.py declares how each field is set (flag, environment variable, reader, range, help) and
builds it from the command line and the environment.
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
    host: str = "127.0.0.1"
    port: int = 50051
    db_path: Path = PROJECT_ROOT / "db" / "predictions.db"
    # A postgresql:// URL (the registry several replicas share) replaces db_path. It may hold a password,
    # so it stays out of repr() and the logs show it redacted.
    database_url: str | None = field(default=None, repr=False)
    models_dir: Path = PROJECT_ROOT / "models"
    # None: the models directory is the store. An s3:// URL makes the models directory a cache of that bucket.
    artifact_store: str | None = None
    cache_max_bytes: int = 0
    store_timeout_seconds: float = 10.0
    store_retries: int = 2
    fetch_concurrency: int = 8
    migrations_dir: Path = MIGRATIONS_DIR
    # Where to write the bound port once serving; lets tests and scripts ask for port 0.
    port_file: Path | None = None
    version_policy: VersionPolicy = VersionPolicy.WARN
    strict: bool = False
    # PRAGMA quick_check of the SQLite file at start-up; reads every page, so a huge file may skip it.
    integrity_check: bool = True
    # Start even though the registry records no prediction set while the models directory holds artifacts.
    allow_empty_registry: bool = False
    max_message_bytes: int = 64 * 1024 * 1024
    max_rows_per_request: int = 100_000
    max_concurrent_rpcs: int = 64
    # IngestHistory and ImportModel streams open at once, each holding a thread while it waits for its messages:
    # 8 lets several clients upload batches side by side (more would mostly wait on the database's writes) and
    # is all that idle streams can hold; Predict and health have threads of their own (server/api/admitting.py).
    max_concurrent_streams: int = 8
    # Trains and imports running at once: each holds a core for seconds to minutes.
    max_concurrent_trains: int = 2
    # A client stream (IngestHistory, ImportModel) that sends nothing for this long is cancelled.
    stream_idle_seconds: float = 30.0
    # Cores one fit may use: n_jobs is capped to it, and so are the BLAS and OpenMP pools during the fit.
    fit_jobs: int = 1
    train_deadline_seconds: float = 600.0
    busy_timeout_seconds: float = 5.0
    grace_seconds: float = 30.0
    # How often to look for a current set changed by another process; 0 turns live reload off.
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
    # Most rows one batched predict call may answer (server/services/batching.py); 0 turns batching off.
    batch_max_rows: int = 256
    # How long a batch may wait for the callers the previous batch answered to come back (adaptive: never alone).
    batch_max_wait_ms: float = 2.0
    # Modules (with their submodules) besides scikit-learn, NumPy and SciPy whose classes an artifact may
    # name when unpickled (server/storage/safe_pickle.py): their code runs at every load.
    trusted_modules: tuple[str, ...] = ()
    # Most pooled PostgreSQL connections one serving process holds; it holds one more to LISTEN. The default
    # lets 3 replicas of 2 workers use 30 of PostgreSQL's default 100 slots (docs/deployment.md: Running several replicas).
    db_pool_size: int = DEFAULT_POOL_SIZE
    registry_timeout_seconds: float = DEFAULT_REGISTRY_TIMEOUT_SECONDS
    # Which form answers Predict: a compiled one proven faithful to the pipeline, or the pipeline itself.
    runtime: RuntimeChoice = RuntimeChoice.AUTO
    # Largest difference of a probability or regression value a compiled form may show in its proof.
    runtime_tolerance: float = 1e-9
    # The Prometheus endpoint (server/observability/metrics.py): off at 0; its host is `host` unless given.
    metrics_port: int = 0
    metrics_host: str | None = None
    # prometheus-client's multiprocess directory, holding its files only, of which those of earlier runs are
    # removed at start (server/preflight.py refuses any other); None: a private one, removed at exit.
    metrics_dir: Path | None = None
    log_format: LogFormat = LogFormat.TEXT
    log_level: LogLevel = LogLevel.INFO
    # One log line per call of either service (method, model type, code, duration, peer).
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
