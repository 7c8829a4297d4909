"""Persistence adapters: the SQLite registry and the joblib artifact store."""
