"""--db URLs: every spelling of a PostgreSQL URL is read as one, any other URL is refused at once, and no
message, log line or file name ever shows a password (issue 13, item 4)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from predserve.server.config import parse_config
from predserve.server.errors import StorageError
from predserve.server.settings import ServerConfig
from predserve.server.storage.databases import open_database
from predserve.server.storage.postgres import PostgresChangeFeed, PostgresDatabase, _translate_postgres
from predserve.server.storage.urls import DatabaseLocationError, postgres_url, redact_url, scrub
from tests.support import PROJECT_ROOT, ServerProcess

MARKER = "S3cretMarker"
ERROR = "predserve-server: error: "


def refusal(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse_config(argv, env=env)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(ERROR)
    return err.strip()


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://u:pw@db.example:5433/registry",
        "postgres://u:pw@db.example:5433/registry",
        "POSTGRESQL://u:pw@db.example:5433/registry",
        "Postgres://u:pw@db.example:5433/registry",
        "postgresql+psycopg://u:pw@db.example:5433/registry",
        "PostgreSQL+Psycopg://u:pw@db.example:5433/registry",
    ],
)
def test_every_spelling_of_a_postgres_url_becomes_the_libpq_one(given: str) -> None:
    expected = "postgresql://u:pw@db.example:5433/registry"
    for config in (parse_config(["--db", given], env={}), parse_config([], env={"PREDSERVE_DB": given})):
        assert (config.database_url, config.db_path) == (expected, ServerConfig().db_path)
    database = open_database(given)
    assert isinstance(database, PostgresDatabase) and database.url == expected


def test_a_sqlite_path_stays_a_path() -> None:
    for path in ["x.db", "dir/postgresql.db", "postgresql:x.db", "C:relative.db"]:
        config = parse_config(["--db", path], env={})
        assert (config.database_url, config.db_path) == (None, Path(path))
        assert postgres_url(path) is None


@pytest.mark.parametrize("scheme", ["mysql", "sqlite", "http", "file", "postgresql+asyncpg"])
def test_any_other_url_is_refused_naming_its_scheme_only(capsys: pytest.CaptureFixture[str], scheme: str) -> None:
    url = f"{scheme}://u:{MARKER}@db.example/registry"
    for argv, env, source in [(["--db", url], {}, "--db"), ([], {"PREDSERVE_DB": url}, "PREDSERVE_DB")]:
        line = refusal(capsys, argv, env)
        assert line == f"{ERROR}{source}: unsupported URL scheme {scheme!r}; use a SQLite file path or postgresql://..."
        assert MARKER not in line and "db.example" not in line


def test_a_bad_variable_is_refused_even_when_the_flag_overrides_it(capsys: pytest.CaptureFixture[str]) -> None:
    line = refusal(capsys, ["--db", "x.db"], {"PREDSERVE_DB": f"mysql://u:{MARKER}@h/db"})
    assert "PREDSERVE_DB: unsupported URL scheme 'mysql'" in line and MARKER not in line


@pytest.mark.parametrize("path", [f"./postgresql+psycopg://u:{MARKER}@h/db", f"jdbc:postgresql://u:{MARKER}@h/db"])
def test_a_path_holding_a_scheme_separator_is_refused(capsys: pytest.CaptureFixture[str], path: str) -> None:
    line = refusal(capsys, ["--db", path], {})
    assert line == f"{ERROR}--db: a SQLite file path cannot contain '://'; use a path or postgresql://..."


MALFORMED = [
    f"postgresql://u:{MARKER}@[::1/db",
    f"postgresql://u:{MARKER}%zz5@127.0.0.1:55432/db",
    f"postgres://u:{MARKER}@h/db?no_such_parameter=1",
    f"POSTGRESQL://u:{MARKER}@[::1/db",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_is_refused_without_any_of_it(capsys: pytest.CaptureFixture[str], url: str) -> None:
    for argv, env, source in [(["--db", url], {}, "--db"), ([], {"PREDSERVE_DB": url}, "PREDSERVE_DB")]:
        line = refusal(capsys, argv, env)
        assert line == (
            f"{ERROR}{source}: the postgresql:// URL cannot be parsed (check its host, port and percent-escapes)"
        )


def test_a_port_out_of_range_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for port in ["0", "65536", "abc"]:
        line = refusal(capsys, ["--db", f"postgresql://u:{MARKER}@h:{port}/db"], {})
        assert line.endswith("--db: the postgresql:// URL's port must be a number from 1 to 65535")
    with pytest.raises(DatabaseLocationError):
        postgres_url("postgresql://h1:5432,h2:x/db")
    assert postgres_url("postgresql://h1:5432,h2:5433/db") == "postgresql://h1:5432,h2:5433/db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://predserve:{MARKER}@db.example:5433/registry",
            "postgresql://predserve@db.example:5433/registry",
        ),
        (f"postgresql://predserve@db.example/registry?password={MARKER}", "postgresql://predserve@db.example/registry"),
        (f"postgresql://:{MARKER}@db.example/registry", "postgresql://db.example/registry"),
        (f"postgresql://u:{MARKER}%zz@db.example/registry", "postgresql://(unparsable URL)"),
        (f"postgresql://u:{MARKER}@[::1/db", "postgresql://(unparsable URL)"),
        (f"mysql://u:{MARKER}@db.example/registry", "postgresql://(unparsable URL)"),
    ],
)
def test_redact_url_keeps_the_user_and_drops_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "spellings"),
    [
        (f"postgresql://u:{MARKER}@h/db", [MARKER]),
        (f"postgresql://u:{MARKER}%zz@h/db", [f"{MARKER}%zz"]),
        (f"postgresql://u:{MARKER}%21@h/db", [f"{MARKER}!", f"{MARKER}%21"]),
        (f"postgresql://u:{MARKER}@[::1/db", [MARKER]),
        (f"postgresql://u@h/db?password={MARKER}%21", [f"{MARKER}!", f"{MARKER}%21"]),
        (f"postgresql://u@h/db?sslmode=require&password={MARKER}", [MARKER]),
    ],
)
def test_scrub_hides_every_spelling_of_the_password(url: str, spellings: list[str]) -> None:
    for shown in [url, url.partition("://")[2], *spellings]:
        message = scrub(f'connection failed: "{shown}" in connection info string', url)
        assert MARKER not in message and "***" in message
    assert scrub("connection refused", url) == "connection refused"
    assert scrub(f"nothing of {MARKER}", "") == f"nothing of {MARKER}"


# Built directly, as a caller bypassing parse_config would: libpq quotes the bad token, password and all.
UNPARSABLE = f"postgresql://u:{MARKER}%zz@127.0.0.1:1/db"


def test_prepare_never_shows_the_password() -> None:
    with pytest.raises(StorageError) as error:
        PostgresDatabase(UNPARSABLE, busy_timeout_seconds=1).prepare()
    assert MARKER not in str(error.value) and "(unparsable URL)" in str(error.value)
    assert "password" not in str(error.value).lower() or "***" in str(error.value)


def test_translated_errors_never_show_the_password() -> None:
    url = f"postgresql://u:{MARKER}@h/db"
    translated = _translate_postgres(psycopg.OperationalError(f"server said: {url} and {MARKER}"), url)
    assert MARKER not in str(translated) and "cannot be reached: server said: *** and ***" in str(translated)


def test_the_change_feed_warning_never_shows_the_password(caplog: pytest.LogCaptureFixture) -> None:
    feed = PostgresChangeFeed(UNPARSABLE)
    with caplog.at_level(logging.WARNING):
        assert feed.wait(0.01) is False
    assert "no notifications from the database" in caplog.text and MARKER not in caplog.text


def run_server(tmp_path: Path, location: str, env_name: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real `python -m server`, in the project root as the console script would be run from anywhere."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("PREDSERVE_")}
    db = [] if env_name else ["--db", location]
    return subprocess.run(
        [sys.executable, "-m", "predserve.server", "--port", "0", "--models-dir", str(tmp_path / "models"), *db],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean | ({env_name: location} if env_name else {}),
    )


def entries(root: Path) -> set[str]:
    return {entry.name for entry in root.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("location", "env_name", "line"),
    [
        (f"postgresql+asyncpg://u:{MARKER}@host/db", None, "--db: unsupported URL scheme 'postgresql+asyncpg'"),
        (f"mysql://u:{MARKER}@host/db", "PREDSERVE_DB", "PREDSERVE_DB: unsupported URL scheme 'mysql'"),
        (f"sqlite:///{MARKER}/x.db", None, "--db: unsupported URL scheme 'sqlite'"),
        (f"postgresql://u:{MARKER}@[::1/db", None, "--db: the postgresql:// URL cannot be parsed"),
        (f"postgresql://u:{MARKER}%zz5@127.0.0.1:55432/db", None, "--db: the postgresql:// URL cannot be parsed"),
    ],
)
def test_the_server_refuses_a_bad_url_creating_nothing(
    tmp_path: Path, location: str, env_name: str | None, line: str
) -> None:
    before = entries(PROJECT_ROOT)
    result = run_server(tmp_path, location, env_name)
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith(ERROR + line)
    assert MARKER not in result.stderr
    assert entries(PROJECT_ROOT) == before and not (PROJECT_ROOT / location.partition("/")[0]).exists()
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
def test_an_unreachable_server_is_reported_without_the_password(tmp_path: Path, scheme: str) -> None:
    """It waits for the database, never exits for it (issue 24, item 8), and says why without the password."""
    replica = ServerProcess(tmp_path, db=f"{scheme}://u:{MARKER}@127.0.0.1:1/db").start(wait=False)
    try:
        replica.wait_for_log("cannot connect to the database postgresql://u@127.0.0.1:1/db", 60)
    finally:
        replica.stop(timeout=30)
    output = replica.log()
    assert "waiting for the registry database before listening" in output
    assert all(MARKER not in line for line in output.splitlines())
    for path in tmp_path.rglob("*"):
        assert MARKER not in path.name
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes()


# Issue 24, item 5: libpq's keyword form is a PostgreSQL connection string too, never a SQLite file.
KEYWORDS = f"host=127.0.0.1 port=5432 user=u password={MARKER} dbname=d"


@pytest.mark.parametrize(
    "given",
    [KEYWORDS, f"  dbname=d host=db.example password='{MARKER} x' sslmode=require", f"dbname = d password = {MARKER}"],
)
def test_a_libpq_keyword_string_is_a_postgres_connection_string(given: str) -> None:
    for config in (parse_config(["--db", given], env={}), parse_config([], env={"PREDSERVE_DB": given})):
        assert (config.database_url, config.db_path) == (given, ServerConfig().db_path)
    database = open_database(given)
    assert isinstance(database, PostgresDatabase) and database.url == given
    assert MARKER not in database.name and database.name.startswith("postgresql://")
    password = psycopg.conninfo.conninfo_to_dict(given)["password"]
    message = scrub(f"connection failed: {given!r}; password {password}", given)
    assert MARKER not in message


@pytest.mark.parametrize(
    ("given", "line"),
    [
        (f"host=h passwrd={MARKER}", "the libpq keyword string (key=value ...) cannot be parsed"),
        (f"host=h password='{MARKER}", "the libpq keyword string (key=value ...) cannot be parsed"),
        (f"x={MARKER}.db", "the libpq keyword string (key=value ...) cannot be parsed"),
        (f"host=h port=99999 password={MARKER}", "the libpq keyword string's port must be a number from 1 to 65535"),
    ],
)
def test_a_bad_keyword_string_is_refused_without_any_of_it(
    capsys: pytest.CaptureFixture[str], given: str, line: str
) -> None:
    for argv, env, source in [(["--db", given], {}, "--db"), ([], {"PREDSERVE_DB": given}, "PREDSERVE_DB")]:
        shown = refusal(capsys, argv, env)
        assert shown.startswith(f"{ERROR}{source}: {line}") and MARKER not in shown


def test_an_unterminated_quote_still_gives_up_its_password() -> None:
    given = f"host=h password='{MARKER} and more"
    assert MARKER not in scrub(f"bad conninfo: {given[7:]}", given)


@pytest.mark.slow
@pytest.mark.postgres
def test_the_server_serves_a_keyword_string_registry_and_never_shows_its_password(
    tmp_path: Path, postgres_url: str
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(postgres_url)
    password = str(params["password"])
    keywords = " ".join(f"{key}={value}" for key, value in params.items())
    process = ServerProcess(tmp_path, db=keywords).start()
    try:
        with process.client() as client:
            assert client.health() == "SERVING"
    finally:
        process.stop()
    log = process.log()
    assert password not in log and f"database postgresql://predserve@127.0.0.1:{params['port']}/" in log
    for root in (tmp_path, PROJECT_ROOT):  # no SQLite file named after the string
        assert not [entry.name for entry in root.iterdir() if password in entry.name or "host=" in entry.name]
