"""A replica's change feed: LISTEN on the channel every change of a current set is announced on (NOTIFY)."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from predserve.server.storage.postgres_liveness import CONNECT_TIMEOUT_SECONDS
from predserve.server.storage.urls import first_line, scrub

logger = logging.getLogger(__name__)

# NOTIFY channel on which a recorded or promoted prediction set is announced; the payload is the model type.
CHANGES_CHANNEL = "predserve_prediction_sets"
# While its connection is down, how often the change feed tries to LISTEN again.
FEED_RECONNECT_SECONDS = 0.25


class PostgresChangeFeed:
    """LISTEN on a connection of its own; wait() returns as soon as a NOTIFY arrives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._broken = False

    def wait(self, timeout: float) -> bool:
        """While the connection is down, tries to LISTEN again every FEED_RECONNECT_SECONDS, however long
        the polling interval: the replica must follow changes again as soon as the database returns."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._conn is None:
                    self._conn = psycopg.connect(
                        self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="predserve"
                    )
                    self._conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    if self._broken:
                        logger.info("live reload: listening for changes again")
                    self._broken = False
                    return True  # announcements made while nobody listened are lost: look once now
                remaining = max(0.0, deadline - time.monotonic())
                return any(True for _ in self._conn.notifies(timeout=remaining, stop_after=1))
            except psycopg.Error as exc:
                if not self._broken:
                    logger.warning(
                        "live reload: no notifications from the database (%s); polling meanwhile",
                        scrub(first_line(exc), self.url),
                    )
                self._broken = True
                self.close()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(FEED_RECONNECT_SECONDS, remaining))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
