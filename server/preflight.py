"""Start-up checks on the files a configuration names, run before anything is created or migrated.

Each problem is one StartupCheckFailed whose message names the option, the file and what is wrong, so
that a wrong path is reported before a database is created beside it, and a bad certificate is not
reported by gRPC as "Failed to bind to address".
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from predserve.server.observability.metrics import foreign_entries, running_writers
from predserve.server.options import flag_of
from predserve.server.settings import ServerConfig

SQLITE_HEADER = b"SQLite format 3\x00"
# More than a port number and a newline: not a file predserve wrote.
MAX_PORT_FILE_BYTES = 16


class StartupCheckFailed(Exception):
    """A configured file or directory cannot serve; the message is one line for the operator."""


def check_startup(config: ServerConfig) -> None:
    """Raises StartupCheckFailed on the first problem; changes nothing on disk."""
    _check_models_dir(config.models_dir)
    if config.database_url is None:  # PostgreSQL reports its own problems in one line when it connects
        _check_sqlite_file(config.db_path)
    if config.port_file is not None:
        _check_port_file(config.port_file, config)
    if config.metrics_dir is not None:
        _check_metrics_dir(config.metrics_dir, config)
    if config.tls_cert is not None and config.tls_key is not None:
        _check_tls_pair(config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        _check_client_ca(config.tls_client_ca)


def _check_models_dir(path: Path) -> None:
    if not path.exists():
        _check_creatable(flag_of("models_dir"), path)
        return
    if not path.is_dir():
        raise StartupCheckFailed(f"--models-dir {path} is not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartupCheckFailed(f"--models-dir {path} is not readable, writable and searchable by this user")


def _check_sqlite_file(path: Path) -> None:
    if not path.exists():
        _check_creatable(flag_of("db_path"), path)
        return
    if path.is_dir():
        raise StartupCheckFailed(f"--db {path} is a directory, not a SQLite database file")
    if not path.is_file():
        raise StartupCheckFailed(f"--db {path} is not a regular file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise StartupCheckFailed(f"--db {path} is not readable and writable by this user")
    # SQLite writes its -wal and -shm files beside the database.
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StartupCheckFailed(f"--db {path}: its directory is not writable (SQLite keeps its WAL files there)")
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StartupCheckFailed(f"--db {path} cannot be read: {exc.strerror}") from None
    if header and header != SQLITE_HEADER:  # an empty file is what SQLite itself makes a database of
        raise StartupCheckFailed(f"--db {path} is not a SQLite database")


def _check_port_file(path: Path, config: ServerConfig) -> None:
    """The port file is replaced once serving: it may only be a file predserve wrote (a port number), an
    empty one (as mktemp makes), or none yet, never another option's file or a program's."""
    if config.database_url is None and _within(path, config.db_path):
        raise StartupCheckFailed(f"--port-file {path} is the --db file")
    if path.exists():
        if path.is_dir():
            raise StartupCheckFailed(f"--port-file {path} is a directory")
        if not stat.S_ISREG(path.stat().st_mode):  # a device or a FIFO: replacing it would remove it
            raise StartupCheckFailed(f"--port-file {path} is not a regular file")
        try:
            with path.open("rb") as file:
                held = file.read(MAX_PORT_FILE_BYTES + 1).strip()
        except OSError as exc:
            raise StartupCheckFailed(f"--port-file {path} cannot be read: {exc.strerror}") from None
        if held and not (len(held) <= MAX_PORT_FILE_BYTES and held.isdigit()):
            raise StartupCheckFailed(
                f"--port-file {path} holds something else than a port number, and would be replaced by one"
            )
    directory = path.absolute().parent
    if not directory.is_dir():
        raise StartupCheckFailed(f"--port-file {path} cannot be written: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupCheckFailed(f"--port-file {path} cannot be written: {directory} is not writable by this user")


def _check_metrics_dir(path: Path, config: ServerConfig) -> None:
    """--metrics-dir is wiped at start, so it may hold metric files only, of no running process when metrics
    are on (the rule and its reasons: server/observability/metrics.py), and no other option's data."""
    others = [(flag_of("models_dir"), config.models_dir)]
    if config.database_url is None:
        others.append(("--db file", config.db_path))
    if config.port_file is not None:
        others.append((flag_of("port_file"), config.port_file))
    for option, other in others:
        if _within(other, path):
            relation = "is" if _within(path, other) else "holds"
            raise StartupCheckFailed(
                f"--metrics-dir {path} {relation} the {option} {other}; it is wiped at start: give it a directory "
                "of its own"
            )
    # The models directory may be shared by replicas on several hosts, whose metric files would meet there.
    if _within(path, config.models_dir):
        raise StartupCheckFailed(f"--metrics-dir {path} is inside the --models-dir {config.models_dir}")
    if not path.exists() and not path.is_symlink():
        _check_creatable(flag_of("metrics_dir"), path)
        return
    if not path.is_dir():
        raise StartupCheckFailed(f"--metrics-dir {path} is not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartupCheckFailed(f"--metrics-dir {path} is not readable, writable and searchable by this user")
    foreign = foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise StartupCheckFailed(
            f"--metrics-dir {path} holds {shown}, which prometheus-client did not write; it is wiped at start: "
            "give it an empty directory of its own"
        )
    running = running_writers(path) if config.metrics_port else []
    if running:
        name, pid = running[0]
        raise StartupCheckFailed(
            f"--metrics-dir {path} is in use: process {pid}, still running, writes its {name}; give each server "
            "a directory of its own"
        )


def _within(inner: Path, outer: Path) -> bool:
    """Whether `inner` is `outer` or lies inside it, symlinks resolved (neither needs to exist)."""
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def _check_creatable(option: str, path: Path) -> None:
    """A missing path will be created: its nearest existing ancestor must be a directory we can write."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StartupCheckFailed(f"{option} {path} cannot be created: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StartupCheckFailed(f"{option} {path} cannot be created: {ancestor} is not writable by this user")


class _EncryptedKey(Exception):
    pass


def _refuse_password() -> str:
    # Called only for an encrypted key; raising keeps OpenSSL from prompting on a terminal.
    raise _EncryptedKey


def _check_tls_pair(cert: Path, key: Path) -> None:
    _check_readable(flag_of("tls_cert"), cert)
    _check_readable(flag_of("tls_key"), key)
    _check_certificates(flag_of("tls_cert"), cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_refuse_password)
    except _EncryptedKey:
        raise StartupCheckFailed(f"--tls-key {key} is encrypted; give the key unencrypted") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise StartupCheckFailed(f"--tls-key {key} does not match --tls-cert {cert}") from None
        # The certificates were read above, so what OpenSSL could not read is the key.
        raise StartupCheckFailed(f"--tls-key {key} is not a PEM private key") from None


def _check_client_ca(ca: Path) -> None:
    _check_readable(flag_of("tls_client_ca"), ca)
    _check_certificates(flag_of("tls_client_ca"), ca)


def _check_certificates(option: str, path: Path) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise StartupCheckFailed(f"{option} {path} is not a PEM certificate") from None


def _check_readable(option: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise StartupCheckFailed(f"{option} {path} cannot be read: {exc.strerror}") from None
