"""Every server option, declared once: the ServerConfig field it sets, its flag, its environment variable, how
its text is read, its allowed range and its documentation. server/config.py builds the argparse parser and the
environment fallbacks from this table, and docs/configuration.md's table is generated from it (`make docs`:
scripts/render_options.py, checked by tests/test_config.py). The defaults are ServerConfig's own (server/settings.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from predserve.server.domain import RuntimeChoice, VersionPolicy
from predserve.server.observability.logs import LogFormat, LogLevel
from predserve.server.option_kinds import (
    ARTIFACT_STORE,
    BOOLEAN,
    INTEGER,
    MAX_SECONDS,
    MODULE_NAMES,
    NOT_NEGATIVE,
    NUMBER,
    OPTIONAL_PATH,
    OPTIONAL_TEXT,
    PATH,
    POSITIVE,
    POSITIVE_SECONDS,
    SECONDS,
    TEXT,
    Kind,
    Within,
    choice,
    number_text,
)
from predserve.server.settings import MIGRATIONS_DIR as MIGRATIONS_DIR
from predserve.server.settings import PROJECT_ROOT, ServerConfig

MIN_HMAC_KEY_BYTES = 16
# gRPC's channel options are C ints.
MAX_GRPC_INT = 2**31 - 1
# Below this a live reload interval is a busy loop over the database, not a polling interval.
MIN_RELOAD_INTERVAL_SECONDS = 0.05


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(ServerConfig)}


@dataclass(frozen=True)
class Option:
    """One server option: the ServerConfig field it sets, its flag and variable, and how to read them."""

    field: str
    flag: str
    env: str
    kind: Kind
    help: str
    within: Within | None = None
    metavar: str | None = None

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.field]

    @property
    def flags(self) -> tuple[str, ...]:
        """Every flag that sets it: a switch also has its --no- form, to undo the environment's choice."""
        return (self.flag, "--no-" + self.flag[2:]) if self.kind is BOOLEAN else (self.flag,)

    @property
    def shown_default(self) -> str:
        value = self.default
        if value is None or value == ():
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, enum.Enum):
            return str(value.value)
        if isinstance(value, Path):
            return f"{value.relative_to(PROJECT_ROOT)}" if value.is_relative_to(PROJECT_ROOT) else str(value)
        return number_text(value) if isinstance(value, int | float) else str(value)

    def read(self, text: str, source: str) -> Any:
        """The value of `text`, given as `source` (a flag or a variable); ValueError names both."""
        try:
            value = self.kind.parse(text)
        except ValueError:
            raise ValueError(f"{source} must be {self.kind.expected}, not {text!r}") from None
        if self.within is not None and not self.within.allows(value):
            raise ValueError(f"{source} must be {self.within}, not {text!r}")
        return value


STORE_TIMEOUT = "connect and read timeout of one call to the object store"
STORE_RETRIES = "times a failed call to the object store is tried again, with backoff"
FETCHES = "fetches from the object store at once when the cache lacks the current sets at start-up"

# db_path's value is a location: --db also takes a postgresql:// URL, which becomes database_url.
OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", "PREDSERVE_HOST", TEXT, "address to bind", metavar="HOST"),
    Option(
        "port",
        "--port",
        "PREDSERVE_PORT",
        INTEGER,
        "port to bind (`0`: any free port, see `--port-file`); 0..65535",
        Within(0, 65535),
    ),
    Option(
        "db_path",
        "--db",
        "PREDSERVE_DB",
        TEXT,
        "the SQLite database file; a `postgresql://` URL or a libpq keyword string selects PostgreSQL, the "
        "registry several replicas share (see [Running several replicas](deployment.md#running-several-replicas))",
        metavar="FILE|URL",
    ),
    Option(
        "models_dir",
        "--models-dir",
        "PREDSERVE_MODELS_DIR",
        PATH,
        "directory of joblib artifacts; with an object store as --artifact-store, this replica's verified cache",
    ),
    Option(
        "artifact_store",
        "--artifact-store",
        "PREDSERVE_ARTIFACT_STORE",
        ARTIFACT_STORE,
        "`--models-dir` is the store; `s3://bucket/prefix` keeps artifacts in a bucket, and `--models-dir` becomes "
        "this replica's verified cache (see [Artifacts on object "
        "storage](deployment.md#artifacts-on-object-storage))",
    ),
    Option(
        "cache_max_bytes",
        "--cache-max-bytes",
        "PREDSERVE_CACHE_MAX_BYTES",
        INTEGER,
        "no bound; else the most bytes the cache of an object store keeps, least recently used files of sets "
        "nobody serves evicted first",
        NOT_NEGATIVE,
    ),
    Option(
        "store_timeout_seconds",
        "--store-timeout",
        "PREDSERVE_STORE_TIMEOUT",
        NUMBER,
        "connect and read timeout of one call to the object store",
        POSITIVE_SECONDS,
    ),
    Option(
        "store_retries",
        "--store-retries",
        "PREDSERVE_STORE_RETRIES",
        INTEGER,
        "times a failed call to the object store is tried again, with backoff; 0..10",
        Within(0, 10),
    ),
    Option(
        "fetch_concurrency",
        "--fetch-concurrency",
        "PREDSERVE_FETCH_CONCURRENCY",
        INTEGER,
        "fetches at once when the cache lacks current sets at start-up; 1..64",
        Within(1, 64),
    ),
    Option(
        "port_file",
        "--port-file",
        "PREDSERVE_PORT_FILE",
        OPTIONAL_PATH,
        "write the bound port there once serving; a file already there must hold a port number or nothing",
    ),
    Option(
        "version_policy",
        "--version-policy",
        "PREDSERVE_VERSION_POLICY",
        choice(VersionPolicy),
        "serve an artifact trained under other library versions, and say so in ListModels",
    ),
    Option(
        "strict",
        "--strict",
        "PREDSERVE_STRICT",
        BOOLEAN,
        "start even if a current artifact is refused (fall back to an older set, or mark the type unavailable)",
    ),
    Option(
        "integrity_check",
        "--integrity-check",
        "PREDSERVE_INTEGRITY_CHECK",
        BOOLEAN,
        "`PRAGMA quick_check` of the SQLite file at start-up; a corrupted file is refused with one line (see "
        "[Database integrity](operations.md#database-integrity))",
    ),
    Option(
        "allow_empty_registry",
        "--allow-empty-registry",
        "PREDSERVE_ALLOW_EMPTY_REGISTRY",
        BOOLEAN,
        "refuse to start when the registry records no prediction set but the models directory holds artifacts (the "
        "registry was probably lost)",
    ),
    Option(
        "max_message_bytes",
        "--max-message-bytes",
        "PREDSERVE_MAX_MESSAGE_BYTES",
        INTEGER,
        "most bytes of one message (64 MiB by default), in both directions; at most 2147483647",
        Within(1, MAX_GRPC_INT),
    ),
    Option(
        "max_rows_per_request",
        "--max-rows-per-request",
        "PREDSERVE_MAX_ROWS_PER_REQUEST",
        INTEGER,
        "most rows in one Predict, one inline Train or one IngestHistory stream (one batch; the client library and "
        "CLI send larger files as several)",
        POSITIVE,
    ),
    Option(
        "max_concurrent_rpcs",
        "--max-concurrent-rpcs",
        "PREDSERVE_MAX_CONCURRENT_RPCS",
        INTEGER,
        "most unary calls (Predict, ModelInfer, the listings and metadata, Promote, GarbageCollect) being handled "
        "at once, each on a thread of its own; more are refused at once with RESOURCE_EXHAUSTED, never queued (see "
        "[Isolation](#isolation-of-work-classes))",
        POSITIVE,
    ),
    Option(
        "max_concurrent_streams",
        "--max-concurrent-streams",
        "PREDSERVE_MAX_CONCURRENT_STREAMS",
        INTEGER,
        "most IngestHistory and ImportModel streams open at once, each on a thread of its own; more are refused at "
        "once with RESOURCE_EXHAUSTED, so that idle streams can never hold the threads of Predict or health",
        POSITIVE,
    ),
    Option(
        "max_concurrent_trains",
        "--max-concurrent-trains",
        "PREDSERVE_MAX_CONCURRENT_TRAINS",
        INTEGER,
        "most Trains and ImportModels running at once; more are refused at once with RESOURCE_EXHAUSTED (see "
        "[Isolation](#isolation-of-work-classes))",
        POSITIVE,
    ),
    Option(
        "stream_idle_seconds",
        "--stream-idle-seconds",
        "PREDSERVE_STREAM_IDLE_SECONDS",
        NUMBER,
        "an IngestHistory or ImportModel stream that sends nothing for this long is cancelled",
        POSITIVE_SECONDS,
    ),
    Option(
        "fit_jobs",
        "--fit-jobs",
        "PREDSERVE_FIT_JOBS",
        INTEGER,
        "cores one fit may use; a recipe's `n_jobs` is capped to it, and so are the BLAS and OpenMP pools while it "
        "fits",
        POSITIVE,
    ),
    Option(
        "train_deadline_seconds",
        "--train-deadline-seconds",
        "PREDSERVE_TRAIN_DEADLINE_SECONDS",
        NUMBER,
        "a Train still running after this long records nothing",
        POSITIVE_SECONDS,
    ),
    Option(
        "busy_timeout_seconds",
        "--busy-timeout",
        "PREDSERVE_BUSY_TIMEOUT",
        NUMBER,
        "how long a write waits for another writer's lock before the call fails with UNAVAILABLE",
        SECONDS,
    ),
    Option(
        "grace_seconds",
        "--grace-seconds",
        "PREDSERVE_GRACE_SECONDS",
        NUMBER,
        "how long in-flight calls may run on after SIGTERM",
        SECONDS,
    ),
    Option(
        "reload_interval_seconds",
        "--reload-interval",
        "PREDSERVE_RELOAD_INTERVAL",
        NUMBER,
        "how often to pick up a current set changed by another process (`0`: off; else at least 0.05)",
        Within(MIN_RELOAD_INTERVAL_SECONDS, MAX_SECONDS, off=0),
    ),
    Option(
        "workers",
        "--workers",
        "PREDSERVE_WORKERS",
        INTEGER,
        "N serving processes forked after the models are loaded, sharing the port",
        POSITIVE,
    ),
    Option(
        "import_timeout_seconds",
        "--import-timeout",
        "PREDSERVE_IMPORT_TIMEOUT",
        NUMBER,
        "how long an imported artifact may take to load in its probe process",
        POSITIVE_SECONDS,
    ),
    Option(
        "tls_cert",
        "--tls-cert",
        "PREDSERVE_TLS_CERT",
        OPTIONAL_PATH,
        "plain text; see [Securing a deployment](security.md#securing-a-deployment)",
    ),
    Option("tls_key", "--tls-key", "PREDSERVE_TLS_KEY", OPTIONAL_PATH, "the PEM private key of `--tls-cert`"),
    Option(
        "tls_client_ca",
        "--tls-client-ca",
        "PREDSERVE_TLS_CLIENT_CA",
        OPTIONAL_PATH,
        "with a CA bundle, only clients with a certificate it signed get in (mutual TLS)",
    ),
    Option(
        "batch_max_rows",
        "--batch-max-rows",
        "PREDSERVE_BATCH_MAX_ROWS",
        INTEGER,
        "most rows one batched predict answers for concurrent calls of a tree-based model; `0` turns batching off",
        NOT_NEGATIVE,
    ),
    Option(
        "batch_max_wait_ms",
        "--batch-max-wait-ms",
        "PREDSERVE_BATCH_MAX_WAIT_MS",
        NUMBER,
        "under load only, how long a batch waits for the callers of the previous one",
        Within(0, MAX_SECONDS * 1000),
        metavar="MS",
    ),
    Option(
        "trusted_modules",
        "--trusted-module",
        "PREDSERVE_TRUSTED_MODULES",
        MODULE_NAMES,
        "modules (with their submodules) whose classes an artifact may name besides scikit-learn, NumPy and SciPy; "
        "their code runs at every load (see [Securing a deployment](security.md#securing-a-deployment))",
    ),
    Option(
        "registry_timeout_seconds",
        "--registry-timeout",
        "PREDSERVE_REGISTRY_TIMEOUT",
        NUMBER,
        "the longest a call that needs a PostgreSQL registry waits on one that does not answer (stopped, frozen, "
        "partitioned) before UNAVAILABLE; Predict and health never wait on it (see [Running several "
        "replicas](deployment.md#running-several-replicas))",
        POSITIVE_SECONDS,
    ),
    Option(
        "db_pool_size",
        "--db-pool-size",
        "PREDSERVE_DB_POOL_SIZE",
        INTEGER,
        "most pooled connections to a PostgreSQL registry per serving process, which holds one more to LISTEN (see "
        "[Running several replicas](deployment.md#running-several-replicas) for `max_connections`)",
        POSITIVE,
    ),
    Option(
        "runtime",
        "--runtime",
        "PREDSERVE_RUNTIME",
        choice(RuntimeChoice),
        "answer with a compiled form of each pipeline proven faithful to it, where there is one; `sklearn`: always "
        "the pipeline's own predict",
    ),
    Option(
        "runtime_tolerance",
        "--runtime-tolerance",
        "PREDSERVE_RUNTIME_TOLERANCE",
        NUMBER,
        "largest difference of a probability or regression value a compiled form may show in its proof (absolute "
        "up to magnitude 1, relative beyond); labels must be identical",
        Within(0, 1),
    ),
    Option(
        "metrics_port",
        "--metrics-port",
        "PREDSERVE_METRICS_PORT",
        INTEGER,
        "no metrics; else the port of the Prometheus endpoint `/metrics`, summed over `--workers` (see "
        "[Observability](observability.md#observability))",
        Within(0, 65535),
    ),
    Option(
        "metrics_host",
        "--metrics-host",
        "PREDSERVE_METRICS_HOST",
        OPTIONAL_TEXT,
        "the endpoint binds the `--host` address",
        metavar="HOST",
    ),
    Option(
        "metrics_dir",
        "--metrics-dir",
        "PREDSERVE_METRICS_DIR",
        OPTIONAL_PATH,
        "the workers' metric files go to a private temporary directory, removed at exit; a directory given must "
        "hold metric files only, and those of earlier runs are removed at start (see "
        "[Observability](observability.md#observability))",
    ),
    Option(
        "log_format",
        "--log-format",
        "PREDSERVE_LOG_FORMAT",
        choice(LogFormat),
        "`text`, or `json`: one object a line (time, level, logger, message, pid and the event's fields)",
    ),
    Option("log_level", "--log-level", "PREDSERVE_LOG_LEVEL", choice(LogLevel), "the least severe level logged"),
    Option(
        "access_log",
        "--access-log",
        "PREDSERVE_ACCESS_LOG",
        BOOLEAN,
        "with it, one line per call of either service (method, model type, code, duration, peer)",
    ),
)
# Environment (or *_FILE) only: never a flag, which the process list would show.
SECRET_VARIABLES = ("PREDSERVE_ADMIN_TOKEN", "PREDSERVE_PREDICT_TOKEN", "PREDSERVE_ARTIFACT_HMAC_KEY")


def flag_of(field: str) -> str:
    """The flag that sets a ServerConfig field, for messages that name it: spelled once, in OPTIONS."""
    return next(option.flag for option in OPTIONS if option.field == field)
