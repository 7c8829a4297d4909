"""LiveReloader: notices that another process changed which set is current, and swaps it in.

A CLI promote, another server or another worker process writes the database; every server polls
the current set ids (a tiny indexed query) and loads what changed, without a restart and without
failing any Predict, since a swap replaces one slot of the ModelStore whole. Where the database
announces changes (PostgreSQL's LISTEN/NOTIFY), the reloader looks as soon as one arrives; the
polling stays as the safety net for an announcement lost with a dropped connection.

Every serving process syncs before it binds its port (sync_until): a forked worker holds its parent's
start-up copy of the models, which may be sets ago. Until a sync succeeds the store is marked not synced,
and Predict refuses with UNAVAILABLE instead of answering from a stale set (sync_before_serving, one try,
leaves a process in that state for the ticks to retry).
"""

from __future__ import annotations

import logging
import os
import threading

from predserve.server.errors import ArtifactMissing, PredserveError
from predserve.server.model_store import LoadedModel, ModelStore, UnavailableModel
from predserve.server.observability.telemetry import Telemetry
from predserve.server.retrying import until_it_works
from predserve.server.services.registration import SetRegistrar
from predserve.server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)

# With live reload off (--reload-interval 0), how often a process that could not sync at start tries again.
UNSYNCED_RETRY_SECONDS = 1.0


class LiveReloader:
    def __init__(
        self,
        sets: PredictionSetRepository,
        registrar: SetRegistrar,
        store: ModelStore,
        interval_seconds: float,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.sets = sets
        self.registrar = registrar
        # What is served now; every swap goes through the registrar, the reloader only marks it synced.
        self.store = store
        self.interval = interval_seconds
        self.telemetry = telemetry or Telemetry()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Sets we failed to load once are not retried every tick; the log already said why.
        self._refused: set[int] = set()
        # Sets whose file is not there (yet): on a shared store another host's rename may not be visible
        # here at once (NFS caches directory lookups), so these are retried every tick, logged once.
        self._missing: set[int] = set()

    def sync_before_serving(self) -> bool:
        """Brings the store in line with the database before the first call; False if it cannot (yet).

        On False the store stays marked not synced, with the reason, and the ticks started by start()
        keep trying; the first one that succeeds lets the process answer.
        """
        try:
            self._sync_or_mark_why_not()
        except Exception as exc:  # unreachable, busy or broken: anything but agreement keeps calls refused
            logger.log(
                logging.WARNING if isinstance(exc, PredserveError) else logging.ERROR,
                "cannot sync with the database before serving (%s); NOT_SERVING until a sync succeeds",
                _reason(exc),
                exc_info=not isinstance(exc, PredserveError),
            )
            return False
        return True

    def sync_until(self, stop: threading.Event) -> bool:
        """sync_once, tried again with a backoff (server/retrying.py) until it succeeds (True) or `stop` is set
        (False); the store is marked not synced, with the reason, meanwhile, and the reason logged."""

        def attempt() -> bool:
            self._sync_or_mark_why_not()
            return True

        def report(exc: BaseException, waited: float) -> None:
            logger.warning(
                "not listening until this process has synced with the database (%.0fs so far): %s",
                waited,
                _reason(exc),
                exc_info=not isinstance(exc, PredserveError),
            )

        return until_it_works(attempt, (Exception,), stop, report) is not None

    def _sync_or_mark_why_not(self) -> None:
        """sync_once, the store marked not synced until it succeeds, with the reason when it raises."""
        self.store.mark_not_synced("not yet compared with the database")
        try:
            self.sync_once()
        except Exception as exc:  # unreachable, busy or broken: anything but agreement keeps it unsynced
            self.store.mark_not_synced(_reason(exc))
            raise

    def start(self) -> None:
        if self.interval <= 0 and self.store.not_synced_reason is None:
            return
        self._thread = threading.Thread(target=self._run, name="live-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        reloading = self.interval > 0  # else only until the first sync succeeds
        feed = self.sets.change_feed() if reloading else None
        try:
            while not self._stop.is_set() and (reloading or self.store.not_synced_reason is not None):
                if feed is None:
                    self._stop.wait(self.interval if reloading else UNSYNCED_RETRY_SECONDS)
                else:
                    feed.wait(self.interval)
                if not self._stop.is_set():
                    self._sync_logging_errors()
        finally:
            if feed is not None:
                feed.close()

    def _sync_logging_errors(self) -> None:
        was_synced = self.store.not_synced_reason is None
        try:
            self.sync_once()
        except PredserveError as exc:  # a busy or unreachable database: try again next tick
            logger.warning("live reload skipped a tick: %s", exc)
            if not was_synced:
                self.store.mark_not_synced(str(exc))
            return
        except Exception:
            logger.exception("live reload failed; it will try again")
            return
        if not was_synced:
            logger.info(
                "synced with the database: SERVING %d model type(s) (pid %d)", len(self.store.slots()), os.getpid()
            )

    def sync_once(self) -> list[str]:
        """Loads every model type whose current set differs from the one in memory, including a type this
        process has never served; returns them. Marks the store synced once the database was read through.

        A set that cannot be served (refused, or its file not visible yet) keeps what is served, as on
        every tick: the database was reached and compared, which is what being synced means.
        """
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
            logger.info(
                "live reload: model type=%s now serves set=%d (changed by another process)",
                model_type,
                set_id,
                extra={"model_type": model_type, "prediction_set_id": set_id, "event": "reload"},
            )
            self.telemetry.reloaded(model_type)
            changed.append(model_type)
        self._evict_archived_pins()
        self.registrar.settle_unrecorded()
        self.store.mark_synced()
        return changed

    def _evict_archived_pins(self) -> None:
        """Pinned sets that retention archived (on any replica) leave the cache before they are asked again."""
        evicted = self.store.evict_pinned(self.sets.archived_among(self.store.pinned_ids()))
        if evicted:
            logger.info("live reload: dropped archived pinned set(s) %s from the cache", evicted)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, PredserveError) else f"{type(exc).__name__} (see the server log)"


def _served_set(slot: LoadedModel | UnavailableModel | None) -> int | None:
    if isinstance(slot, LoadedModel):
        return slot.record.id
    if isinstance(slot, UnavailableModel) and slot.record is not None and not slot.waiting:
        return slot.record.id
    return None
