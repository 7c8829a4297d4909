"""What an operator sees of a running server: metrics (Prometheus), structured logs, the access log."""
