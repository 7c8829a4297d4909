"""Checks of a loaded registry before the server binds its port: what start-up refuses, and what it reports."""

from __future__ import annotations

import logging

from predserve.server.errors import ArtifactStoreUnreachable
from predserve.server.model_store import LoadedModel, ModelStore, UnavailableModel
from predserve.server.storage.artifacts import ArtifactStore
from predserve.server.storage.databases import RegistryDatabase
from predserve.server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The server must not start (for instance --strict with a model that cannot be served)."""


def report_orphans(artifacts: ArtifactStore, sets: PredictionSetRepository) -> None:
    """Files no row points at come from a Train that died before its commit; they are never loaded."""
    stored = _stored_names(artifacts)
    orphans = stored - sets.known_paths(stored)
    if orphans:
        logger.warning("ignoring %d artifact(s) that no prediction set records: %s", len(orphans), sorted(orphans))


def refuse_a_lost_registry(database: RegistryDatabase, sets: PredictionSetRepository, artifacts: ArtifactStore) -> None:
    """An empty registry beside stored artifacts is most likely a lost or wrong database (a deleted file, a
    typo in --db): starting would serve nothing and bury the artifacts as orphans."""
    if not sets.is_empty():
        return
    stored = _stored_names(artifacts)
    if stored:
        raise StartupError(
            f"database {database.name} records no prediction set, but {artifacts.describe()} holds {len(stored)} "
            "artifact(s): the registry was probably lost; restore it, or pass --allow-empty-registry "
            "to start a new one beside them"
        )


def _stored_names(artifacts: ArtifactStore) -> set[str]:
    """What the store holds; nothing, with a warning, when an object store does not answer: start-up serves
    what the cache holds rather than wait for a check."""
    try:
        return artifacts.stored_names()
    except ArtifactStoreUnreachable as exc:
        logger.warning("could not list the artifact store (%s): its orphans are not checked at this start", exc)
        return set()


def refuse_unservable(store: ModelStore) -> None:
    broken = [model_type for model_type, slot in store.slots().items() if _refused(slot)]
    if broken:
        raise StartupError(f"--strict: model type(s) not served from their current set: {', '.join(sorted(broken))}")


def _refused(slot: LoadedModel | UnavailableModel) -> bool:
    """A current artifact that exists in the database but could not be served (not merely untrained)."""
    if isinstance(slot, LoadedModel):
        return slot.is_fallback
    return slot.record is not None and slot.record.artifact is not None
