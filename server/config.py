"""Server configuration: the settings (server/settings.py) built from flags, environment and defaults.

Each option is declared once, in OPTIONS: its field, flag, environment variable, how its text is read,
its allowed range and its help. The argparse parser, the environment fallbacks and the table of docs/configuration.md
(checked by tests/test_config.py) all follow that table; the defaults are the dataclass's own.
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

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
    secret_from_env,
    token_from_env,
)

# ServerConfig and the paths are defined in server/settings.py and re-exported for the callers of this module.
from predserve.server.settings import MIGRATIONS_DIR as MIGRATIONS_DIR
from predserve.server.settings import PROJECT_ROOT, ServerConfig
from predserve.server.storage.urls import DatabaseLocationError, postgres_url

PROG = "predserve-server"

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
    Option("port", "--port", "PREDSERVE_PORT", INTEGER, "port to bind, 0 for any free one", Within(0, 65535)),
    Option(
        "db_path",
        "--db",
        "PREDSERVE_DB",
        TEXT,
        "SQLite database file, or a postgresql://user@host/db URL of a registry shared by several replicas",
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
        "where artifacts live: a directory (by default --models-dir itself), or s3://bucket/prefix on any "
        "S3-compatible service (credentials and AWS_ENDPOINT_URL from the AWS environment)",
    ),
    Option(
        "cache_max_bytes",
        "--cache-max-bytes",
        "PREDSERVE_CACHE_MAX_BYTES",
        INTEGER,
        "most bytes the cache of an object store keeps, least recently used evicted first; 0 for no bound. "
        "The sets served now are never evicted",
        NOT_NEGATIVE,
    ),
    Option(
        "store_timeout_seconds", "--store-timeout", "PREDSERVE_STORE_TIMEOUT", NUMBER, STORE_TIMEOUT, POSITIVE_SECONDS
    ),
    Option("store_retries", "--store-retries", "PREDSERVE_STORE_RETRIES", INTEGER, STORE_RETRIES, Within(0, 10)),
    Option("fetch_concurrency", "--fetch-concurrency", "PREDSERVE_FETCH_CONCURRENCY", INTEGER, FETCHES, Within(1, 64)),
    Option("port_file", "--port-file", "PREDSERVE_PORT_FILE", OPTIONAL_PATH, "write the bound port here once serving"),
    Option(
        "version_policy",
        "--version-policy",
        "PREDSERVE_VERSION_POLICY",
        choice(VersionPolicy),
        "what to do with an artifact trained under other library versions: serve it and say so, or refuse it",
    ),
    Option("strict", "--strict", "PREDSERVE_STRICT", BOOLEAN, "refuse to start when a current artifact is refused"),
    Option(
        "integrity_check",
        "--integrity-check",
        "PREDSERVE_INTEGRITY_CHECK",
        BOOLEAN,
        "check every page of the SQLite file at start-up (PRAGMA quick_check) and refuse a corrupted one",
    ),
    Option(
        "allow_empty_registry",
        "--allow-empty-registry",
        "PREDSERVE_ALLOW_EMPTY_REGISTRY",
        BOOLEAN,
        "start with a registry that records no prediction set although the models directory holds artifacts",
    ),
    Option(
        "max_message_bytes",
        "--max-message-bytes",
        "PREDSERVE_MAX_MESSAGE_BYTES",
        INTEGER,
        "largest message received or sent",
        Within(1, MAX_GRPC_INT),
    ),
    Option(
        "max_rows_per_request",
        "--max-rows-per-request",
        "PREDSERVE_MAX_ROWS_PER_REQUEST",
        INTEGER,
        "most rows one Predict, inline Train or IngestHistory stream may carry",
        POSITIVE,
    ),
    Option(
        "max_concurrent_rpcs",
        "--max-concurrent-rpcs",
        "PREDSERVE_MAX_CONCURRENT_RPCS",
        INTEGER,
        "unary calls (Predict, ModelInfer, listings, metadata, Promote, GarbageCollect) handled at once, one "
        "thread each; more get RESOURCE_EXHAUSTED at once",
        POSITIVE,
    ),
    Option(
        "max_concurrent_streams",
        "--max-concurrent-streams",
        "PREDSERVE_MAX_CONCURRENT_STREAMS",
        INTEGER,
        "IngestHistory and ImportModel streams open at once, one thread each; more get RESOURCE_EXHAUSTED at once",
        POSITIVE,
    ),
    Option(
        "max_concurrent_trains",
        "--max-concurrent-trains",
        "PREDSERVE_MAX_CONCURRENT_TRAINS",
        INTEGER,
        "Trains and ImportModels running at once; more get RESOURCE_EXHAUSTED at once",
        POSITIVE,
    ),
    Option(
        "stream_idle_seconds",
        "--stream-idle-seconds",
        "PREDSERVE_STREAM_IDLE_SECONDS",
        NUMBER,
        "a client stream (IngestHistory, ImportModel) silent this long is cancelled",
        POSITIVE_SECONDS,
    ),
    Option("fit_jobs", "--fit-jobs", "PREDSERVE_FIT_JOBS", INTEGER, "cores one fit may use (caps n_jobs)", POSITIVE),
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
        "how often to pick up a current set changed by another process (0: off)",
        Within(MIN_RELOAD_INTERVAL_SECONDS, MAX_SECONDS, off=0),
    ),
    Option(
        "workers",
        "--workers",
        "PREDSERVE_WORKERS",
        INTEGER,
        "serving processes sharing the port, forked after the models are loaded",
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
    Option("tls_cert", "--tls-cert", "PREDSERVE_TLS_CERT", OPTIONAL_PATH, "PEM certificate chain: serve TLS only"),
    Option("tls_key", "--tls-key", "PREDSERVE_TLS_KEY", OPTIONAL_PATH, "PEM private key of --tls-cert"),
    Option(
        "tls_client_ca",
        "--tls-client-ca",
        "PREDSERVE_TLS_CLIENT_CA",
        OPTIONAL_PATH,
        "PEM CA bundle: require client certificates it signed (mutual TLS)",
    ),
    Option(
        "batch_max_rows",
        "--batch-max-rows",
        "PREDSERVE_BATCH_MAX_ROWS",
        INTEGER,
        "most rows one batched predict answers for concurrent calls of a tree-based model (0: off)",
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
        "modules, comma-separated, whose classes an artifact may name besides scikit-learn, NumPy and SciPy"
        " (their code runs at every load)",
    ),
    Option(
        "registry_timeout_seconds",
        "--registry-timeout",
        "PREDSERVE_REGISTRY_TIMEOUT",
        NUMBER,
        "the longest a call that needs a PostgreSQL registry waits on one that does not answer (stopped, frozen, "
        "partitioned) before it fails with UNAVAILABLE; Predict and health never wait on it",
        POSITIVE_SECONDS,
    ),
    Option(
        "db_pool_size",
        "--db-pool-size",
        "PREDSERVE_DB_POOL_SIZE",
        INTEGER,
        "most pooled connections to a PostgreSQL registry per serving process (it holds one more to LISTEN)",
        POSITIVE,
    ),
    Option(
        "runtime",
        "--runtime",
        "PREDSERVE_RUNTIME",
        choice(RuntimeChoice),
        "auto: answer with a compiled form proven faithful to the pipeline where there is one; sklearn: always "
        "with the pipeline's own predict",
    ),
    Option(
        "runtime_tolerance",
        "--runtime-tolerance",
        "PREDSERVE_RUNTIME_TOLERANCE",
        NUMBER,
        "largest difference of a probability or regression value a compiled form may show in its proof "
        "(absolute up to magnitude 1, relative beyond)",
        Within(0, 1),
    ),
    Option(
        "metrics_port",
        "--metrics-port",
        "PREDSERVE_METRICS_PORT",
        INTEGER,
        "port of the Prometheus endpoint (/metrics, summed over --workers), 0 for none",
        Within(0, 65535),
    ),
    Option(
        "metrics_host",
        "--metrics-host",
        "PREDSERVE_METRICS_HOST",
        OPTIONAL_TEXT,
        "address the Prometheus endpoint binds; none: the --host address",
        metavar="HOST",
    ),
    Option(
        "metrics_dir",
        "--metrics-dir",
        "PREDSERVE_METRICS_DIR",
        OPTIONAL_PATH,
        "directory of the workers' metric files and nothing else, wiped of earlier runs' at start; none: a private "
        "temporary one",
    ),
    Option("log_format", "--log-format", "PREDSERVE_LOG_FORMAT", choice(LogFormat), "text, or one JSON object a line"),
    Option("log_level", "--log-level", "PREDSERVE_LOG_LEVEL", choice(LogLevel), "least severe level logged"),
    Option("access_log", "--access-log", "PREDSERVE_ACCESS_LOG", BOOLEAN, "log every call: method, model, code, time"),
)
# Environment (or *_FILE) only: never a flag, which the process list would show.
SECRET_VARIABLES = ("PREDSERVE_ADMIN_TOKEN", "PREDSERVE_PREDICT_TOKEN", "PREDSERVE_ARTIFACT_HMAC_KEY")


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit status 2 (argparse would print the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The flags of OPTIONS. Every default is None, so that a flag not given leaves the choice to the
    environment, then to ServerConfig's default."""
    parser = _OneLineParser(
        prog=PROG,
        description="Serve predictions from persisted scikit-learn pipelines over gRPC. "
        f"`{PROG} recover [options]` records every orphan artifact of the models directory that verifies "
        "as a prediction set that is not current, and exits.",
    )
    for option in OPTIONS:
        help_text = f"{option.help} (env {option.env}; default {option.shown_default})"
        if option.kind is BOOLEAN:
            parser.add_argument(option.flag, dest=option.field, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            metavar = option.metavar or option.kind.metavar
            parser.add_argument(option.flag, dest=option.field, metavar=metavar, help=help_text)
    return parser


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Flag, else environment variable, else default. A bad value exits with status 2 and one line, and a
    bad variable is reported even when a flag overrides it: the environment is wrong either way."""
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        database_url = _database_url(args.db_path, env)
        values = {option.field: _value(option, getattr(args, option.field), env) for option in OPTIONS}
        admin_token = token_from_env(env, "PREDSERVE_ADMIN_TOKEN")
        predict_token = token_from_env(env, "PREDSERVE_PREDICT_TOKEN")
        hmac_key = secret_from_env(env, "PREDSERVE_ARTIFACT_HMAC_KEY")
    except ValueError as exc:
        parser.error(str(exc))
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        parser.error("--tls-cert and --tls-key go together")
    if values["tls_client_ca"] is not None and values["tls_cert"] is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if admin_token is not None and admin_token == predict_token:
        parser.error("PREDSERVE_PREDICT_TOKEN must differ from the admin token")
    if hmac_key is not None and len(hmac_key) < MIN_HMAC_KEY_BYTES:
        parser.error(f"PREDSERVE_ARTIFACT_HMAC_KEY must hold at least {MIN_HMAC_KEY_BYTES} bytes")
    location = str(values.pop("db_path"))
    return ServerConfig(
        **values,
        db_path=_DEFAULTS["db_path"] if database_url else Path(location),
        database_url=database_url,
        admin_token=admin_token,
        predict_token=predict_token,
        artifact_hmac_key=hmac_key,
    )


def _database_url(given: str | None, env: Mapping[str, str]) -> str | None:
    """The libpq form of the PostgreSQL URL --db (else PREDSERVE_DB) gives; None for a SQLite path. Any
    other URL is refused, naming its scheme only: the rest may hold a password, and read as a path it
    would become a SQLite file named after it. The variable is checked even when the flag overrides it."""
    url = None
    for source, text in (("PREDSERVE_DB", env.get("PREDSERVE_DB")), ("--db", given)):
        if text is not None:
            try:
                url = postgres_url(text)
            except DatabaseLocationError as exc:
                raise ValueError(f"{source}: {exc}") from None
    return url


def _value(option: Option, given: Any, env: Mapping[str, str]) -> Any:
    from_env = env.get(option.env)
    env_value = option.read(from_env, option.env) if from_env is not None else option.default
    if given is None:
        return env_value
    return given if option.kind is BOOLEAN else option.read(given, option.flag)
