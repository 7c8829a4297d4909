"""LiveReloader: notices that another process changed which set is current, and swaps it in.

A CLI promote, another server or another worker process writes the database; every server polls
the current set ids (a tiny indexed query) and loads what changed, without a restart and without
failing any Predict, since a swap replaces one slot of the ModelStore whole. Where the database
announces changes (PostgreSQL's LISTEN/NOTIFY), the reloader looks as soon as one arrives; the
polling stays as the safety net for an announcement lost with a dropped connection.
"""

from __future__ import annotations

import logging
import threading

from server.errors import ArtifactMissing, PredserveError
from server.model_store import LoadedModel, ModelStore, UnavailableModel
from server.services.registration import SetRegistrar
from server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)


class LiveReloader:
    def __init__(
        self, sets: PredictionSetRepository, registrar: SetRegistrar, store: ModelStore, interval_seconds: float
    ) -> None:
        self.sets = sets
        self.registrar = registrar
        self.store = store  # read only: what is served now; every swap goes through the registrar
        self.interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Sets we failed to load once are not retried every tick; the log already said why.
        self._refused: set[int] = set()
        # Sets whose file is not there (yet): on a shared store another host's rename may not be visible
        # here at once (NFS caches directory lookups), so these are retried every tick, logged once.
        self._missing: set[int] = set()

    def start(self) -> None:
        if self.interval <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="live-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        feed = self.sets.change_feed()
        try:
            while not self._stop.is_set():
                if feed is None:
                    self._stop.wait(self.interval)
                else:
                    feed.wait(self.interval)
                if not self._stop.is_set():
                    self._sync_logging_errors()
        finally:
            if feed is not None:
                feed.close()

    def _sync_logging_errors(self) -> None:
        try:
            self.sync_once()
        except PredserveError as exc:  # a busy or unreachable database: try again next tick
            logger.warning("live reload skipped a tick: %s", exc)
        except Exception:
            logger.exception("live reload failed; it will try again")

    def sync_once(self) -> list[str]:
        """Loads every model type whose current set differs from the one in memory; returns them."""
        changed = []
        slots = self.store.slots()
        for model_type, set_id in sorted(self.sets.current_ids().items()):
            if _served_set(slots.get(model_type)) == set_id or set_id in self._refused:
                continue
            try:
                adopted = self.registrar.adopt(model_type, set_id)
            except ArtifactMissing as exc:
                if set_id not in self._missing:
                    logger.warning("live reload: set %d of model type %s: %s; will retry", set_id, model_type, exc)
                self._missing.add(set_id)
                continue
            except PredserveError as exc:
                self._refused.add(set_id)
                logger.error(
                    "live reload: set %d of model type %s cannot be served (%s); keeping what is served",
                    set_id,
                    model_type,
                    exc,
                )
                continue
            if adopted is None:
                continue
            logger.info("live reload: model type=%s now serves set=%d (changed by another process)", model_type, set_id)
            changed.append(model_type)
        return changed


def _served_set(slot: LoadedModel | UnavailableModel | None) -> int | None:
    if isinstance(slot, LoadedModel):
        return slot.record.id
    if isinstance(slot, UnavailableModel) and slot.record is not None:
        return slot.record.id
    return None
