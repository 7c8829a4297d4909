"""What a --db value names, read without ever showing a secret it may hold.

A value with a scheme (`name://`) is a URL: a PostgreSQL one in any of its spellings, normalised to the
`postgresql://` libpq accepts, or else refused; it never falls through to become a SQLite file named
after it. Messages about a URL, ours or libpq's, go through redact_url or scrub, so that a password
cannot reach a log or a terminal.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import psycopg
import psycopg.conninfo

URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# libpq's other form: whitespace-separated key=value pairs. A SQLite path never starts with a bare word and "="
# (one that does, like "x=1.db", would be a keyword string psycopg refuses: refused here too, never a file).
KEYWORD_STRING = re.compile(r"^\s*[A-Za-z_]+\s*=")
# A keyword string's password, read loosely (a string libpq cannot parse still gives it up): quoted or bare.
KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
# Lower-cased; postgresql+psycopg is SQLAlchemy's spelling, which operators paste from its configuration.
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+psycopg"})
LIBPQ_SCHEME = "postgresql"
UNPARSABLE = "postgresql://(unparsable URL)"
HIDDEN = "***"


class DatabaseLocationError(ValueError):
    """A --db value that is neither a SQLite path nor a usable PostgreSQL URL; the message holds no part of
    the value after its scheme."""


def url_scheme(location: str) -> str | None:
    match = URL_SCHEME.match(location)
    return match.group(1) if match else None


def is_postgres_url(location: str) -> bool:
    scheme = url_scheme(location)
    return scheme is not None and scheme.lower() in POSTGRES_SCHEMES


def postgres_url(location: str) -> str | None:
    """The libpq form of a PostgreSQL URL, or a libpq keyword string as given; None for a SQLite path. Raises
    DatabaseLocationError for any other URL, one that cannot be parsed, or a path holding "://"."""
    scheme = url_scheme(location)
    if scheme is None and KEYWORD_STRING.match(location):
        return _keyword_string(location)
    if scheme is None:
        if "://" in location:
            raise DatabaseLocationError("a SQLite file path cannot contain '://'; use a path or postgresql://...")
        return None
    if scheme.lower() not in POSTGRES_SCHEMES:
        raise DatabaseLocationError(f"unsupported URL scheme {scheme!r}; use a SQLite file path or postgresql://...")
    url = f"{LIBPQ_SCHEME}://{location[len(scheme) + 3 :]}"
    return _checked(
        url,
        "the postgresql:// URL cannot be parsed (check its host, port and percent-escapes)",
        "the postgresql:// URL's port",
    )


def _keyword_string(location: str) -> str:
    """A libpq keyword string (`host=db port=5432 dbname=registry user=u password=...`), which psycopg takes as
    it is: checked here, so that a misspelt keyword stops start-up rather than becoming a SQLite file."""
    return _checked(
        location,
        "the libpq keyword string (key=value ...) cannot be parsed: check each keyword's spelling and quotes",
        "the libpq keyword string's port",
    )


def _checked(conninfo: str, unparsable: str, port_is: str) -> str:
    """conninfo, once psycopg parses it and its ports are numbers from 1 to 65535; else DatabaseLocationError
    with `unparsable` or `port_is ... must be`, never a part of conninfo."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:  # its message quotes the string, password included
        raise DatabaseLocationError(unparsable) from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise DatabaseLocationError(f"{port_is} must be a number from 1 to 65535")
    return conninfo


def first_line(exc: Exception) -> str:
    """The first line of an error's message (libpq's run over several), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def redact_url(url: str) -> str:
    """The URL without its password (user info or ?password=) and without unknown parameters, for logs and
    messages; the user name stays, as it is not a secret and tells which role connects."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return UNPARSABLE
    host = params.get("host", "")
    port = f":{params['port']}" if params.get("port") else ""
    user = f"{params['user']}@" if params.get("user") else ""
    return f"{LIBPQ_SCHEME}://{user}{host}{port}/{params.get('dbname', '')}"


def scrub(message: str, url: str) -> str:
    """The message with every spelling of url's password, and url itself, replaced by ***.

    libpq quotes the conninfo in some errors (a bad percent-escape, a missing "="); this is the one
    place that every message built from a psycopg error goes through."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        message = message.replace(secret, HIDDEN)
    return message


def _secrets(url: str) -> set[str]:
    """What of url must never be shown: the URL as given, and its password raw and decoded. Read loosely,
    so that a URL libpq cannot parse still gives up its password."""
    if not url:
        return set()
    secrets = {url}
    scheme = url_scheme(url)
    if scheme is not None:
        rest = url[len(scheme) + 3 :]
        secrets.add(rest)
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        userinfo = authority.rpartition("@")[0]
        if ":" in userinfo:  # a user name alone is no secret, and hiding it would garble messages
            secrets |= {userinfo, userinfo.partition(":")[2]}
        if "?" in rest:
            for parameter in rest.partition("?")[2].partition("#")[0].split("&"):
                key, _, value = parameter.partition("=")
                if unquote(key) == "password":
                    secrets |= {value, value.replace("+", " ")}
    else:
        for match in KEYWORD_PASSWORD.finditer(url):
            quoted = match.group(1)
            secrets |= {quoted, quoted.strip("'").replace("\\'", "'").replace("\\\\", "\\")}
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if password:
        secrets.add(str(password))
    secrets |= {unquote(secret) for secret in secrets}
    return {secret for secret in secrets if secret}
