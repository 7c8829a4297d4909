"""Server TLS credentials from the configured PEM files; mutual TLS when a client CA is given."""

from __future__ import annotations

import grpc

from predserve.server.settings import ServerConfig


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """None for plain text; raises OSError when a file cannot be read."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
