"""Server configuration: the settings (server/settings.py) built from flags, environment and defaults.

Each option is declared once, in server/options.py's OPTIONS; the parser and the environment fallbacks here
follow that table, and the defaults are the dataclass's own.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from predserve.server.option_kinds import (
    BOOLEAN,
    secret_from_env,
    token_from_env,
)
from predserve.server.options import MIN_HMAC_KEY_BYTES, OPTIONS, Option, flag_of
from predserve.server.settings import ServerConfig
from predserve.server.storage.urls import DatabaseLocationError, postgres_url

PROG = "predserve-server"


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
        help_text = f"{plain(option.help)} (env {option.env}; default {option.shown_default})"
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
        db_path=ServerConfig.db_path if database_url else Path(location),
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
    for source, text in (("PREDSERVE_DB", env.get("PREDSERVE_DB")), (flag_of("db_path"), given)):
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


def plain(text: str) -> str:
    """A documentation text as --help shows it: links as their text, no backticks."""
    return re.sub(r"\[([^]]+)\]\([^)]+\)", r"\1", text).replace("`", "")
