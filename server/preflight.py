"""Start-up checks on the files a configuration names, run before anything is created or migrated.

Each problem is one StartupCheckFailed whose message names the option, the file and what is wrong, so
that a wrong path is reported before a database is created beside it, and a bad certificate is not
reported by gRPC as "Failed to bind to address".
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from server.config import ServerConfig

SQLITE_HEADER = b"SQLite format 3\x00"


class StartupCheckFailed(Exception):
    """A configured file or directory cannot serve; the message is one line for the operator."""


def check_startup(config: ServerConfig) -> None:
    """Raises StartupCheckFailed on the first problem; changes nothing on disk."""
    _check_models_dir(config.models_dir)
    if config.database_url is None:  # PostgreSQL reports its own problems in one line when it connects
        _check_sqlite_file(config.db_path)
    if config.tls_cert is not None and config.tls_key is not None:
        _check_tls_pair(config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        _check_client_ca(config.tls_client_ca)


def _check_models_dir(path: Path) -> None:
    if not path.exists():
        _check_creatable("--models-dir", path)
        return
    if not path.is_dir():
        raise StartupCheckFailed(f"--models-dir {path} is not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartupCheckFailed(f"--models-dir {path} is not readable, writable and searchable by this user")


def _check_sqlite_file(path: Path) -> None:
    if not path.exists():
        _check_creatable("--db", path)
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
    _check_readable("--tls-cert", cert)
    _check_readable("--tls-key", key)
    _check_certificates("--tls-cert", cert)
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
    _check_readable("--tls-client-ca", ca)
    _check_certificates("--tls-client-ca", ca)


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
