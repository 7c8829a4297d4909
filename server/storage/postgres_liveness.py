"""Bounds on a PostgreSQL that stops answering without closing its sockets: a server stopped with SIGSTOP, a
frozen VM, a network partition.

Nothing in libpq notices such a server. Its kernel (or the partition's silence) keeps the TCP connection up,
so TCP keepalives and tcp_user_timeout see nothing wrong while data is acknowledged, and statement_timeout is
enforced by the very server that is frozen. A query sent then blocks without end. So each registry call's
connection is watched from this process (`CallGuard`): after a quarter of --registry-timeout, the server is
asked whether it still answers a new connection at all (`answers`: the 8-byte SSLRequest every PostgreSQL
answers with one byte before authentication); when it does not within another quarter, or when the call's own
deadline has passed, the connection's socket is shut down. The blocked call then fails at once, its transaction
rolled back by PostgreSQL when it reads the end of the stream, and the caller gets UNAVAILABLE. A live server that
is merely slow (a long ingest) is left alone: its own statement_timeout and lock_timeout bound it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import struct
import threading
import time
from typing import Any

import psycopg
import psycopg.conninfo

logger = logging.getLogger(__name__)

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
# The longest a registry call waits on a PostgreSQL that does not answer (--registry-timeout): frozen, stopped
# with SIGSTOP, partitioned. See postgres_liveness.py for how it is kept.
DEFAULT_REGISTRY_TIMEOUT_SECONDS = 2.0
# What a live but slow server may spend on one statement: a frozen one is bounded by the registry timeout.
STATEMENT_TIMEOUT_SECONDS = 60
# Kernel-level checks of an idle pooled connection, so that one whose peer vanished is found before it is used;
# and how long sent data may stay unacknowledged (a partition) before the kernel gives up on the connection.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}
# How long a new connection may take (libpq's least is 2 s): a stopped server refuses at once, so only a
# silent host makes a call wait this long before UNAVAILABLE.
CONNECT_TIMEOUT_SECONDS = 2
# The deferred trigger's message (db/migrations/postgresql/0011_refuse_late_commits.sql).
LATE_COMMIT = "commit refused: the caller's deadline has passed"


def probe_target(url: str) -> tuple[str, int] | None:
    """The one host and port a connection string names, to ask before connecting; None when it names several
    hosts or none (libpq's defaults), where only a connection attempt tells."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return None
    host = str(params.get("hostaddr") or params.get("host") or "")
    port = str(params.get("port") or "5432")
    if not host or "," in host or "," in port or not port.isdigit():
        return None
    return host, int(port)


def answers(host: str, port: int, timeout: float) -> bool:
    """Whether the PostgreSQL at host:port (a directory: its Unix socket) answers an SSLRequest within timeout."""
    try:
        if host.startswith("/"):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = os.path.join(host, f".s.PGSQL.{port}")
        else:
            probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            address = (host, port)
        with probe:
            probe.settimeout(timeout)
            probe.connect(address)
            probe.sendall(_SSL_REQUEST)
            return probe.recv(1) in (b"S", b"N", b"E")
    except OSError:
        return False


class CallGuard:
    """Watches one registry call's connection from a timer thread; cuts it when the server is frozen or the call's
    deadline has passed. `cut_reason` says why, once it has cut."""

    def __init__(self, conn: Any, timeout: float, deadline: float | None = None) -> None:
        self._conn = conn
        self._timeout = timeout
        self._deadline = deadline
        self._lock = threading.Lock()
        self._done = False
        self._timer: threading.Timer | None = None
        self.cut_reason: str | None = None

    def __enter__(self) -> CallGuard:
        self._arm()
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()

    def _arm(self) -> None:
        delay = self._timeout / 4
        if self._deadline is not None:
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
        timer = threading.Timer(delay, self._check)
        timer.daemon = True
        with self._lock:
            if self._done:
                return
            self._timer = timer
        timer.start()

    def _check(self) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._cut("the call's deadline passed before it answered")
            return
        info = self._conn.info
        if answers(info.host, int(info.port), self._timeout / 4):
            self._arm()  # alive, only slow: its own timeouts bound it
        else:
            self._cut(f"it did not answer for {self._timeout / 4:g}s, nor a new connection for {self._timeout / 4:g}s")

    def _cut(self, reason: str) -> None:
        with self._lock:
            if self._done:  # the call finished meanwhile; the connection may already serve another one
                return
            self.cut_reason = reason
            try:
                # A duplicate of the descriptor, shut down: the call blocked on the original wakes up at once,
                # and the descriptor psycopg owns stays valid for it to close.
                duplicate = socket.socket(fileno=os.dup(self._conn.pgconn.socket))
            except OSError:  # already closed
                return
            with duplicate:
                try:
                    duplicate.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        logger.warning("cut a registry call's connection: %s", reason)


def connect_options(registry_timeout_seconds: float) -> dict[str, Any]:
    """libpq's options for every connection: a bounded connect, keepalives, and tcp_user_timeout."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "tcp_user_timeout": int(registry_timeout_seconds * 1000),
        **KEEPALIVES,
    }


def bound_by(conn: Any, commit_by: float, lock_timeout_seconds: float) -> None:
    """A transaction's statements bounded by the time left, its lock waits too (never longer than the busy
    timeout), and the wall-clock time PostgreSQL must not commit after (this host's clock: replicas and the
    database keep time with NTP, far closer than the margin Train leaves before the caller's own deadline)."""
    left_ms = max(1, int((commit_by - time.monotonic()) * 1000))
    lock_ms = max(1, min(left_ms, int(lock_timeout_seconds * 1000)))
    wall = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=left_ms)
    conn.execute(
        "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true), "
        "set_config('predserve.commit_by', %s, true)",
        (f"{left_ms}ms", f"{lock_ms}ms", wall.isoformat()),
    )
