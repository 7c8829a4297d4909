"""predserve server: trains scikit-learn pipelines, persists them, and serves their predictions over gRPC."""
