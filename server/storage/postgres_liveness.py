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
