"""Application services: what predserve does, independent of gRPC."""
