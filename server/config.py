"""Server configuration: one frozen dataclass built from flags, environment and defaults."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.storage.database import is_postgres_url

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
    migrations_dir: Path = MIGRATIONS_DIR
    # Where to write the bound port once serving; lets tests and scripts ask for port 0.
    port_file: Path | None = None
    version_policy: str = "warn"
    strict: bool = False
    max_workers: int = 16
    max_message_bytes: int = 64 * 1024 * 1024
    max_rows_per_request: int = 100_000
    max_concurrent_rpcs: int = 64
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

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def binds_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # any other host name may resolve to a routable address
            return False


def security_summary(config: ServerConfig) -> str:
    """Which protections are on, for the start-up log; says whether a secret is set, never what it is."""

    def state(value: object) -> str:
        return "set" if value is not None else "not set"

    admin_note = (
        " (model-changing calls (Train, IngestHistory, Promote, ImportModel, GarbageCollect) open on loopback)"
        if config.admin_token is None and config.binds_loopback
        else ""
    )
    tls = "off" if config.tls_cert is None else ("mutual" if config.tls_client_ca else "on")
    return (
        f"admin token {state(config.admin_token)}{admin_note}, "
        f"predict token {state(config.predict_token)}{'' if config.predict_token else ' (Predict open)'}, "
        f"TLS {tls}, artifact HMAC key {state(config.artifact_hmac_key)}"
    )


def security_warnings(config: ServerConfig) -> list[str]:
    """What an exposed server risks with this configuration; nothing on a loopback address."""
    if config.binds_loopback:
        return []
    warnings = []
    if config.tls_cert is None:
        warnings.append(
            f"serving on {config.host} without TLS: requests, predictions and bearer tokens cross the network "
            "in clear text, and anyone on the path can read or change them (set --tls-cert and --tls-key)"
        )
    if config.admin_token is None:
        warnings.append(
            f"serving on {config.host} without an admin token: model-changing calls (Train, IngestHistory, "
            "Promote, ImportModel, GarbageCollect) are allowed without a token only on a loopback address, "
            "so here they are refused to every caller "
            "(set PREDSERVE_ADMIN_TOKEN or PREDSERVE_ADMIN_TOKEN_FILE)"
        )
    if config.predict_token is None and config.tls_client_ca is None:
        warnings.append(
            f"serving on {config.host} without a predict token or client certificates: Predict and the model "
            "listings answer anyone who can reach the port (set PREDSERVE_PREDICT_TOKEN or --tls-client-ca)"
        )
    return warnings


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
        default=env.get("PREDSERVE_DB", str(defaults.db_path)),
        help="SQLite database file, or a postgresql://user@host/db URL of a registry shared by several "
        "replicas (env PREDSERVE_DB; default db/predictions.db)",
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
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=float(env.get("PREDSERVE_BUSY_TIMEOUT", defaults.busy_timeout_seconds)),
        help="seconds a write waits for another writer's lock before the call fails with UNAVAILABLE "
        "(env PREDSERVE_BUSY_TIMEOUT; default 5)",
    )
    parser.add_argument("--max-workers", type=int, default=defaults.max_workers, help="threads answering RPCs")
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(env.get("PREDSERVE_MAX_MESSAGE_BYTES", defaults.max_message_bytes)),
        help="largest message received or sent (env PREDSERVE_MAX_MESSAGE_BYTES; default 64 MiB)",
    )
    parser.add_argument(
        "--max-rows-per-request",
        type=int,
        default=int(env.get("PREDSERVE_MAX_ROWS_PER_REQUEST", defaults.max_rows_per_request)),
        help="most rows one Predict, Train or IngestHistory call may carry (env PREDSERVE_MAX_ROWS_PER_REQUEST)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=int(env.get("PREDSERVE_MAX_CONCURRENT_RPCS", defaults.max_concurrent_rpcs)),
        help="calls being handled at once, more get RESOURCE_EXHAUSTED (env PREDSERVE_MAX_CONCURRENT_RPCS; default 64)",
    )
    parser.add_argument(
        "--train-deadline-seconds",
        type=float,
        default=float(env.get("PREDSERVE_TRAIN_DEADLINE_SECONDS", defaults.train_deadline_seconds)),
        help="a Train still running after this long records nothing (env PREDSERVE_TRAIN_DEADLINE_SECONDS)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=_optional_path(env, "PREDSERVE_TLS_CERT"),
        help="PEM certificate chain: serve TLS only (env PREDSERVE_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key", type=Path, default=_optional_path(env, "PREDSERVE_TLS_KEY"), help="PEM private key of --tls-cert"
    )
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        default=_optional_path(env, "PREDSERVE_TLS_CLIENT_CA"),
        help="PEM CA bundle: require client certificates it signed (mutual TLS; env PREDSERVE_TLS_CLIENT_CA)",
    )
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
    parser.add_argument(
        "--import-timeout",
        type=float,
        default=defaults.import_timeout_seconds,
        help="seconds an imported artifact may take to load in its probe process",
    )
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
    _check_limits(parser, args)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    try:
        admin_token = _token(env, "PREDSERVE_ADMIN_TOKEN")
        predict_token = _token(env, "PREDSERVE_PREDICT_TOKEN")
        hmac_key = _secret(env, "PREDSERVE_ARTIFACT_HMAC_KEY")
    except ValueError as exc:
        parser.error(str(exc))
    if admin_token is not None and admin_token == predict_token:
        parser.error("PREDSERVE_PREDICT_TOKEN must differ from the admin token")
    if hmac_key is not None and len(hmac_key) < MIN_HMAC_KEY_BYTES:
        parser.error(f"PREDSERVE_ARTIFACT_HMAC_KEY must hold at least {MIN_HMAC_KEY_BYTES} bytes")
    database_url = args.db if is_postgres_url(args.db) else None
    return ServerConfig(
        host=args.host,
        port=args.port,
        db_path=defaults.db_path if database_url else Path(args.db),
        database_url=database_url,
        models_dir=args.models_dir,
        port_file=args.port_file,
        version_policy=args.version_policy,
        strict=args.strict,
        max_workers=args.max_workers,
        max_message_bytes=args.max_message_bytes,
        max_rows_per_request=args.max_rows_per_request,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        train_deadline_seconds=args.train_deadline_seconds,
        busy_timeout_seconds=args.busy_timeout,
        grace_seconds=args.grace_seconds,
        reload_interval_seconds=args.reload_interval,
        workers=args.workers,
        import_timeout_seconds=args.import_timeout,
        admin_token=admin_token,
        predict_token=predict_token,
        artifact_hmac_key=hmac_key,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        batch_max_rows=args.batch_max_rows,
        batch_max_wait_ms=args.batch_max_wait_ms,
    )


MIN_HMAC_KEY_BYTES = 16


def _check_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("max_message_bytes", "max_rows_per_request", "max_concurrent_rpcs", "train_deadline_seconds"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None


def _secret(env: Mapping[str, str], name: str) -> bytes | None:
    """A secret from env NAME, or from the file env NAME_FILE names; never both. Error texts never hold it."""
    inline, file_name = env.get(name), env.get(f"{name}_FILE")
    if inline is not None and file_name is not None:
        raise ValueError(f"set {name} or {name}_FILE, not both")
    if file_name is not None:
        try:
            value = Path(file_name).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read {name}_FILE {file_name}: {exc.strerror}") from None
    elif inline is not None:
        value = inline.strip().encode()
    else:
        return None
    if not value:
        raise ValueError(f"{name} is set but empty")
    return value


def _token(env: Mapping[str, str], name: str) -> str | None:
    value = _secret(env, name)
    if value is None:
        return None
    # A bearer token travels as a metadata value, which gRPC allows to hold printable ASCII only.
    if not all(0x21 <= byte <= 0x7E for byte in value):
        raise ValueError(f"{name} must be printable ASCII without spaces")
    return value.decode()
