"""The option table: every option reaches its field from its flag and its variable, the README lists the
table, and bad values or unusable files stop the real server with one line before it creates anything."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from predserve.client.cli import main as cli_main
from predserve.client.library import TargetPortError, channel_target
from predserve.server.config import parse_config
from predserve.server.domain import RuntimeChoice, VersionPolicy
from predserve.server.observability.logs import LogFormat, LogLevel
from predserve.server.option_kinds import (
    ARTIFACT_STORE,
    BOOLEAN,
    INTEGER,
    MODULE_NAMES,
    NUMBER,
    OPTIONAL_PATH,
    OPTIONAL_TEXT,
    PATH,
    TEXT,
)
from predserve.server.options import OPTIONS, SECRET_VARIABLES, Option
from predserve.server.preflight import StartupCheckFailed, check_startup
from predserve.server.settings import ServerConfig
from tests.certificates import Pki, make_pki
from tests.support import PROJECT_ROOT

# Fields that are not options: the URL --db may give, the bundled migrations, and the secrets.
NOT_OPTIONS = {"database_url", "migrations_dir", "admin_token", "predict_token", "artifact_hmac_key"}
# --tls-cert and --tls-key go together, and --tls-client-ca needs both.
COMPANIONS = {
    "tls_cert": ["--tls-key", "k.pem"],
    "tls_key": ["--tls-cert", "c.pem"],
    "tls_client_ca": ["--tls-cert", "c.pem", "--tls-key", "k.pem"],
}


def samples(option: Option) -> tuple[str, str]:
    """Two valid texts for an option: one for the environment (not the default), one for the flag
    (not the environment's)."""
    if option.kind in (TEXT, PATH, OPTIONAL_PATH, OPTIONAL_TEXT):
        return f"env-{option.field}", f"flag-{option.field}"
    if option.field == "log_format":
        return "json", "text"
    if option.field == "log_level":
        return "debug", "warning"
    if option.field == "version_policy":
        return "refuse", "warn"
    if option.field == "runtime":
        return "sklearn", "auto"
    if option.kind is MODULE_NAMES:
        return "env_pkg.sub,other", "flag_pkg"
    if option.kind is ARTIFACT_STORE:
        return "s3://env-bucket/models", "/srv/flag-models"
    candidates = ["7", "9", "1000"] if option.kind is INTEGER else ["0.5", "7.25", "9", "0.25"]
    valid = [text for text in candidates if option.within is None or option.within.allows(float(text))]
    valid = [text for text in valid if float(text) != option.default]
    return valid[0], valid[1]


def expected(option: Option, text: str) -> Any:
    if option.kind is INTEGER:
        return int(text)
    if option.kind is NUMBER:
        return float(text)
    if option.field == "version_policy":
        return VersionPolicy(text)
    if option.field == "runtime":
        return RuntimeChoice(text)
    if option.field == "log_format":
        return LogFormat(text)
    if option.field == "log_level":
        return LogLevel(text)
    if option.kind is MODULE_NAMES:
        return tuple(text.split(","))
    return text if option.field in ("host", "metrics_host", "artifact_store") else Path(text)


VALUED = [option for option in OPTIONS if option.kind is not BOOLEAN]


def test_the_table_covers_every_config_field_once() -> None:
    names = [option.field for option in OPTIONS]
    assert set(names) == {f.name for f in fields(ServerConfig)} - NOT_OPTIONS
    assert len(set(names)) == len(names)
    flags = [flag for option in OPTIONS for flag in option.flags]
    assert len(set(flags)) == len(flags)
    variables = [option.env for option in OPTIONS]
    assert len(set(variables)) == len(variables) and all(name.startswith("PREDSERVE_") for name in variables)
    assert not set(variables) & set(SECRET_VARIABLES)


@pytest.mark.parametrize("option", VALUED, ids=lambda option: option.flag)
def test_flag_and_variable_reach_the_field_and_the_flag_wins(option: Option) -> None:
    env_text, flag_text = samples(option)
    companions = COMPANIONS.get(option.field, [])

    def value(argv: list[str], env: dict[str, str]) -> Any:
        return getattr(parse_config(companions + argv, env=env), option.field)

    assert getattr(parse_config([], env={}), option.field) == getattr(ServerConfig(), option.field) == option.default
    assert value([option.flag, flag_text], {}) == expected(option, flag_text)
    assert value([], {option.env: env_text}) == expected(option, env_text) != option.default
    assert value([option.flag, flag_text], {option.env: env_text}) == expected(option, flag_text)


def test_the_strict_switch_reads_booleans_and_its_flags_win() -> None:
    strict = next(option for option in OPTIONS if option.field == "strict")
    assert parse_config([], env={}).strict is False
    assert parse_config(["--strict"], env={}).strict is True
    for word, meaning in [("1", True), ("TRUE", True), ("yes", True), ("On", True), ("0", False), ("off", False)]:
        assert parse_config([], env={strict.env: word}).strict is meaning
    assert parse_config(["--no-strict"], env={strict.env: "yes"}).strict is False
    assert parse_config(["--strict"], env={strict.env: "no"}).strict is True


def test_db_takes_a_file_or_a_postgres_url_from_either_source() -> None:
    url = "postgresql://predserve@db.example/predserve"
    from_env = parse_config([], env={"PREDSERVE_DB": url})
    assert (from_env.database_url, from_env.db_path) == (url, ServerConfig().db_path)
    assert parse_config(["--db", "x.db"], env={"PREDSERVE_DB": url}).database_url is None


def test_help_lists_every_flag_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--help"], env={})
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert all(flag in text for option in OPTIONS for flag in option.flags)
    assert all(option.env in text for option in OPTIONS)


def readme_rows() -> list[list[str]]:
    section = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    section = section.split("<!-- server-options -->\n", 1)[1].split("<!-- /server-options -->", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    # A cell may hold an escaped pipe (`warn\|refuse`).
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_the_configuration_page_shows_the_table_the_declarations_make() -> None:
    spec = importlib.util.spec_from_file_location("render_options", PROJECT_ROOT / "scripts" / "render_options.py")
    assert spec is not None and spec.loader is not None
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    page = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    assert render.table_of(page) == render.markdown_table(), "docs/configuration.md is stale: run `make docs`"


def test_the_readme_lists_exactly_the_table() -> None:
    rows = readme_rows()
    listed_flags = {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)", row[0])}
    listed_variables = {name for row in rows for name in re.findall(r"`(PREDSERVE_[A-Z_]+)`", row[1])}
    assert listed_flags == {flag for option in OPTIONS for flag in option.flags}
    assert listed_variables == {option.env for option in OPTIONS}
    by_flag = {option.flag: option for option in OPTIONS}
    for row in rows:
        option = by_flag[re.findall(r"`(--[a-z-]+)", row[0])[0]]
        assert row[1] == f"`{option.env}`", row
        assert row[2].startswith(f"`{option.shown_default}`"), (row, option.shown_default)


# (argv, env, what the one line must name, the value it must show)
BAD_VALUES = [
    ([], {"PREDSERVE_PORT": "abc"}, "PREDSERVE_PORT", "'abc'"),
    (["--port", "6000"], {"PREDSERVE_PORT": "abc"}, "PREDSERVE_PORT", "'abc'"),
    ([], {"PREDSERVE_MAX_MESSAGE_BYTES": "1e9"}, "PREDSERVE_MAX_MESSAGE_BYTES", "1e9"),
    ([], {"PREDSERVE_BUSY_TIMEOUT": "x"}, "PREDSERVE_BUSY_TIMEOUT", "'x'"),
    ([], {"PREDSERVE_WORKERS": "two"}, "PREDSERVE_WORKERS", "two"),
    ([], {"PREDSERVE_RELOAD_INTERVAL": "soon"}, "PREDSERVE_RELOAD_INTERVAL", "soon"),
    ([], {"PREDSERVE_BATCH_MAX_ROWS": ""}, "PREDSERVE_BATCH_MAX_ROWS", "''"),
    ([], {"PREDSERVE_STRICT": "maybe"}, "PREDSERVE_STRICT", "maybe"),
    (["--port", "-1"], {}, "--port", "-1"),
    (["--port", "70000"], {}, "--port", "70000"),
    (["--reload-interval", "nan"], {}, "--reload-interval", "nan"),
    (["--reload-interval", "1e-9"], {}, "--reload-interval", "1e-9"),
    (["--import-timeout", "nan"], {}, "--import-timeout", "nan"),
    (["--import-timeout", "-1"], {}, "--import-timeout", "-1"),
    (["--grace-seconds", "-1"], {}, "--grace-seconds", "-1"),
    (["--grace-seconds", "nan"], {}, "--grace-seconds", "nan"),
    (["--train-deadline-seconds", "nan"], {}, "--train-deadline-seconds", "nan"),
    (["--busy-timeout", "-1"], {}, "--busy-timeout", "-1"),
    (["--max-message-bytes", "99999999999"], {}, "--max-message-bytes", "99999999999"),
    (["--version-policy", "ignore"], {}, "--version-policy", "ignore"),
    ([], {"PREDSERVE_TRUSTED_MODULES": "pkg,,os"}, "PREDSERVE_TRUSTED_MODULES", "pkg,,os"),
    (["--trusted-module", "my pkg"], {}, "--trusted-module", "my pkg"),
]
BAD_IDS = [" ".join([*(f"{k}={v}" for k, v in env.items()), *argv]) for argv, env, _, _ in BAD_VALUES]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize(("argv", "env", "name", "shown"), BAD_VALUES, ids=BAD_IDS)
def test_a_bad_value_is_one_line_and_status_2(
    argv: list[str], env: dict[str, str], name: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_config(argv, env=env)
    assert exit_.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("predserve-server: error: ") and name in line and shown in line


def run_server(tmp_path: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `python -m server`, with nothing of this test run's own PREDSERVE_* environment."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("PREDSERVE_")}
    location = ["--db", str(tmp_path / "x.db"), "--models-dir", str(tmp_path / "m")]
    return subprocess.run(
        [sys.executable, "-m", "predserve.server", "--port", "0", *location, *argv],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean | (env or {}),
    )


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "env", "name", "shown"), BAD_VALUES, ids=BAD_IDS)
def test_the_server_refuses_a_bad_value_before_creating_anything(
    tmp_path: Path, argv: list[str], env: dict[str, str], name: str, shown: str
) -> None:
    result = run_server(tmp_path, argv, env)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert name in line and shown in line
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def config_in(tmp_path: Path, **changes: Any) -> ServerConfig:
    return ServerConfig(**{"db_path": tmp_path / "x.db", "models_dir": tmp_path / "m", **changes})


def failure(config: ServerConfig) -> str:
    with pytest.raises(StartupCheckFailed) as failed:
        check_startup(config)
    return str(failed.value)


def test_usable_files_pass_the_checks_and_nothing_is_created(tmp_path: Path, pki: Pki) -> None:
    check_startup(config_in(tmp_path))
    check_startup(config_in(tmp_path, db_path=tmp_path / "new" / "deeper" / "x.db"))
    check_startup(config_in(tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca))
    (tmp_path / "empty.db").touch()
    check_startup(config_in(tmp_path, db_path=tmp_path / "empty.db"))
    check_startup(config_in(tmp_path, database_url="postgresql://nobody@nowhere/db", db_path=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_each_unusable_file_is_named_with_its_problem(tmp_path: Path, pki: Pki) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    key = load_pem_private_key(pki.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encryption = serialization.BestAvailableEncryption(b"secret")
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    tls = {"tls_cert": pki.server_cert, "tls_key": pki.server_key}

    assert failure(config_in(tmp_path, models_dir=a_file)) == f"--models-dir {a_file} is not a directory"
    assert failure(config_in(tmp_path, models_dir=a_file / "m")) == (
        f"--models-dir {a_file / 'm'} cannot be created: {a_file} is not a directory"
    )
    assert failure(config_in(tmp_path, db_path=tmp_path)) == (
        f"--db {tmp_path} is a directory, not a SQLite database file"
    )
    assert failure(config_in(tmp_path, db_path=a_file)) == f"--db {a_file} is not a SQLite database"
    assert failure(config_in(tmp_path, tls_cert=pki.server_cert, tls_key=pki.client_key)) == (
        f"--tls-key {pki.client_key} does not match --tls-cert {pki.server_cert}"
    )
    assert failure(config_in(tmp_path, tls_cert=garbage, tls_key=pki.server_key)) == (
        f"--tls-cert {garbage} is not a PEM certificate"
    )
    assert failure(config_in(tmp_path, tls_cert=pki.server_cert, tls_key=garbage)) == (
        f"--tls-key {garbage} is not a PEM private key"
    )
    assert failure(config_in(tmp_path, tls_cert=pki.server_cert, tls_key=encrypted)) == (
        f"--tls-key {encrypted} is encrypted; give the key unencrypted"
    )
    assert failure(config_in(tmp_path, tls_cert=tmp_path / "absent.pem", tls_key=pki.server_key)) == (
        f"--tls-cert {tmp_path / 'absent.pem'} cannot be read: No such file or directory"
    )
    assert failure(config_in(tmp_path, **tls, tls_client_ca=garbage)) == (
        f"--tls-client-ca {garbage} is not a PEM certificate"
    )
    assert a_file.read_text() == "not a directory" and not (tmp_path / "m").exists()


STARTUP_CASES = [
    "models-dir-is-a-file",
    "key-does-not-match",
    "garbage-certificate",
    "db-is-a-directory",
    "db-is-not-sqlite",
]


def startup_cases(tmp_path: Path, pki: Pki) -> dict[str, tuple[list[str], Path]]:
    """What each real start must refuse: its extra flags, and the file its one line must name."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a database")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    return {
        "models-dir-is-a-file": (["--models-dir", str(a_file)], a_file),
        "key-does-not-match": (["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)], pki.client_key),
        "garbage-certificate": (["--tls-cert", str(garbage), "--tls-key", str(pki.server_key)], garbage),
        "db-is-a-directory": (["--db", str(tmp_path / "dir.db")], tmp_path / "dir.db"),
        "db-is-not-sqlite": (["--db", str(a_file)], a_file),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", STARTUP_CASES)
def test_the_server_refuses_unusable_files_before_creating_anything(tmp_path: Path, pki: Pki, case: str) -> None:
    (tmp_path / "dir.db").mkdir()
    argv, named = startup_cases(tmp_path, pki)[case]
    result = run_server(tmp_path, argv)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert str(named) in line and "Failed to bind" not in line
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "m").exists()
    assert (tmp_path / "a-file").read_text() == "not a database"


def test_client_targets_with_a_port_outside_1_to_65535_are_refused() -> None:
    for target in ["127.0.0.1:99999", "[::1]:0", "dns:///predserve:65536", "127.0.0.1:1,127.0.0.1:70000", "h:x"]:
        with pytest.raises(TargetPortError):
            channel_target(target)
    for target in ["127.0.0.1:65535", "[::1]:1", "dns:///predserve:50051", "localhost", "unix:/run/p.sock", "::1"]:
        assert channel_target(target) == target


def test_cli_refuses_a_bad_port_with_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--target", "127.0.0.1:99999", "health"]) == 2
    assert one_line(capsys.readouterr().err) == "predserve: target '127.0.0.1:99999': port 99999 is not in 1..65535"


@pytest.mark.slow
def test_the_cli_process_refuses_a_bad_port() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "predserve.client", "--target", "127.0.0.1:99999", "models"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "99999" in one_line(result.stderr)
