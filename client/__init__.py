"""predserve client: a small library for service-to-service calls, and the `predserve` CLI."""

from client.library import PredserveClient, PredserveClientError

__all__ = ["PredserveClient", "PredserveClientError"]
