"""Free loopback ports for the servers the tests, the benchmarks and the scripts start."""

from __future__ import annotations

import socket


class BusyPort(Exception):
    """A port the bench was about to give a server is taken: a leftover server would share its traffic."""


def free_port(host: str = "127.0.0.1", port: int = 0) -> int:
    """A port nobody listens on. The probe binds without SO_REUSEPORT, so any listener, even one that set
    SO_REUSEPORT (grpcio's default), makes it fail; a busy explicit port is refused rather than shared."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BusyPort(f"port {port} on {host} is busy ({exc.strerror}): stop the server holding it") from exc
        return int(probe.getsockname()[1])
