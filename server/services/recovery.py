"""ArtifactRecoveryService: gives orphan artifacts (files no prediction set records) a row again.

An orphan is left by a Train that died before its commit, or by a lost registry. Each one goes through
the import path as it is (the probe process, the restricted loader, the artifact owner), registered
without promotion, so that nothing is served until an operator promotes it; the orphan file is removed
once its copy is recorded. A file that does not verify stays where it is, untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from predserve.server.errors import PredserveError
from predserve.server.services.importing import ImportCommand, ModelImportService
from predserve.server.services.registration import PromotionPolicy
from predserve.server.storage.artifacts import ArtifactStore, model_type_of
from predserve.server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    """What became of one orphan: the set that records it now, or why it could not be recovered."""

    stored_name: str
    model_type: str | None
    set_id: int | None = None
    problem: str = ""


class ArtifactRecoveryService:
    def __init__(self, sets: PredictionSetRepository, artifacts: ArtifactStore, importer: ModelImportService) -> None:
        self.sets = sets
        self.artifacts = artifacts
        self.importer = importer

    def orphans(self) -> list[str]:
        stored = self.artifacts.stored_names()
        return sorted(stored - self.sets.known_paths(stored))

    def recover(self) -> list[Recovery]:
        unsettled = self.artifacts.unsettled()
        return [
            self._settle(name, unsettled[name]) if name in unsettled else self._recover(name) for name in self.orphans()
        ]

    def _settle(self, stored_name: str, files: list[str]) -> Recovery:
        """A Train that failed at its commit left it: no one was told of a set, so none is made of it."""
        self.artifacts.settle(stored_name, files, recorded=False)
        logger.info("recover: deleted %s: its Train never committed", ", ".join(files))
        return Recovery(
            stored_name, model_type_of(stored_name), problem="left by a Train that never committed: deleted"
        )

    def _recover(self, stored_name: str) -> Recovery:
        model_type = model_type_of(stored_name)
        if model_type is None:
            return Recovery(stored_name, None, problem="not named as predserve names artifacts; left alone")
        try:
            data = self.artifacts.read_unrecorded(stored_name, self.importer.max_bytes)
            registration = self.importer.import_model(
                ImportCommand(model_type=model_type, data=data, promotion=PromotionPolicy.REGISTER_ONLY)
            )
        except PredserveError as exc:
            logger.error("recover: %s stays an orphan: %s", stored_name, exc)
            return Recovery(stored_name, model_type, problem=str(exc))
        self.artifacts.discard(stored_name)
        set_id = registration.model.record.id
        logger.info("recover: %s is now set %d of model type %s (not current)", stored_name, set_id, model_type)
        return Recovery(stored_name, model_type, set_id)
