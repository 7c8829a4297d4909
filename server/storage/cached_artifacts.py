"""The models directory as a verified cache of an object store (--artifact-store s3://...).

The bucket is the store: a Train or an Import puts every file there before its row is committed, gc and
recover list and delete there, and each replica keeps what it serves in its own models directory, a cache
that may be lost at any time (an emptyDir). Nothing is loaded from either place unless its bytes match the
SHA-256 (and HMAC) recorded in the registry: a cached file that does not match is fetched again, a fetched
one that does not match is refused. A fetch lands through a temporary file and a rename, so a crash leaves
no half file in the cache, and --cache-max-bytes evicts the least recently used files of sets nobody serves.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from predserve.server import failpoints
from predserve.server.domain import ArtifactInfo
from predserve.server.errors import ArtifactMissing, ArtifactRejected, ArtifactStoreUnreachable, PredserveError
from predserve.server.observability.telemetry import Telemetry
from predserve.server.storage.artifacts import RUNTIME_SUFFIX, SUFFIX, TEMP_PREFIX, ArtifactStore, writer_tag
from predserve.server.storage.object_store import ObjectStore, StartupListing, directory_of, store_location

logger = logging.getLogger(__name__)

# How long a store that did not answer is taken as down before it is asked again.
DOWN_SECONDS = 5.0


class CachedArtifactStore(ArtifactStore):
    def __init__(
        self,
        cache: Path,
        remote: ObjectStore,
        signing_key: bytes | None = None,
        max_bytes: int = 0,
        fetch_concurrency: int = 8,
        telemetry: Telemetry | None = None,
    ) -> None:
        super().__init__(cache, signing_key)
        self.remote = remote
        self.max_bytes = max_bytes  # 0: unbounded
        self.fetch_concurrency = fetch_concurrency
        self.telemetry = telemetry or Telemetry()
        self._protected: Callable[[], Collection[str]] = frozenset
        self._lock = threading.Lock()  # eviction, the fresh files and the down state
        self._fresh: set[str] = set()
        self._down: tuple[float, str] | None = None  # until when the store is taken as down, and why
        self._listing: StartupListing | None = None
        self._listed: set[str] | ArtifactStoreUnreachable | None = None
        self._listing_used = False

    def describe(self) -> str:
        return f"{self.remote.url} (cache {self.root})"

    def begin_check(self) -> None:
        """Starts the start-up listing of the store (StartupListing: a child process) beside the rest of start-up."""
        if self._listing is None:
            self._listing = self.remote.begin_listing()

    def check_access(self) -> None:
        """Waits for the start-up listing. Bad credentials or a missing bucket stop the start (ArtifactStoreRefused);
        a store that does not answer does not: what the cache holds serves, the rest is fetched once it answers."""
        self._listed_at_start()

    def _listed_at_start(self) -> set[str] | None:
        """The names the start-up listing found; None when the store did not answer it."""
        self.begin_check()
        assert self._listing is not None
        if self._listed is None:
            try:
                self._listed = self._listing.result()
            except ArtifactStoreUnreachable as exc:
                self._mark_down(str(exc))
                logger.warning("%s; serving what the cache holds, fetching the rest once it answers", exc)
                self._listed = exc
        return None if isinstance(self._listed, Exception) else self._listed

    def protect(self, names: Callable[[], Collection[str]]) -> None:
        self._protected = names

    def _write_named(self, name: str, data: bytes, model_type: str) -> ArtifactInfo:
        """The cache's copy, then the store's: the caller commits a row only once both are complete."""
        info = super()._write_named(name, data, model_type)
        try:
            self.remote.put(name, data)
        except BaseException:
            super().discard(name)
            raise
        failpoints.reach(failpoints.AFTER_UPLOAD)
        logger.info(
            "stored %s (sha256 %s, %d bytes) in %s",
            name,
            info.sha256[:12],
            info.size_bytes,
            self.remote.url,
            extra={"event": "stored", "key": name, "sha256": info.sha256[:12], "bytes": info.size_bytes},
        )
        self._evict_over_budget(fresh=name)
        return info

    def read_verified(self, info: ArtifactInfo, model_type: str) -> bytes:
        self._check_signature(info, model_type)
        self.resolve(info.relative_path)  # a path that leads outside is refused before anything is fetched
        try:
            data = super().read_verified(info, model_type)
        except ArtifactMissing:
            pass
        except ArtifactRejected as exc:
            logger.warning(
                "cached %s does not verify (%s); fetching it again from %s", info.relative_path, exc, self.remote.url
            )
        else:
            self.telemetry.cache_looked_up(hit=True)
            self._touch(info.relative_path)
            return data
        self.telemetry.cache_looked_up(hit=False)
        return self._fetch(info)

    def prefetch(self, files: Sequence[ArtifactInfo]) -> None:
        """Fetches, side by side, the files the cache lacks (or holds at another size); what fails is left for
        the load that follows, which reports it."""
        wanted = [file for file in files if not self._cached_at_size(file)]
        if not wanted:
            return
        self._listed_at_start()  # a store found down is then not waited on once per file
        with ThreadPoolExecutor(
            max_workers=min(self.fetch_concurrency, len(wanted)), thread_name_prefix="fetch"
        ) as pool:
            for file, outcome in zip(wanted, pool.map(self._fetch_quietly, wanted), strict=True):
                if outcome:
                    logger.warning("could not fetch %s before loading: %s", file.relative_path, outcome)

    def discard(self, relative_path: str) -> None:
        super().discard(relative_path)
        try:
            self.remote.delete(relative_path)
        except PredserveError as exc:
            logger.warning(
                "could not delete %s from %s (%s): it stays there as an orphan", relative_path, self.remote.url, exc
            )

    def stored_names(self) -> set[str]:
        """The artifacts in the bucket; the start-up listing's answer the first time (start-up's own checks)."""
        if self._listing is not None and not self._listing_used:
            self._listing_used = True
            names = self._listed_at_start()
            if names is None:
                raise ArtifactStoreUnreachable(f"the artifact store {self.remote.url} did not answer at start-up")
        else:
            names = self.remote.names()
        return {name for name in names if name.endswith(SUFFIX) and "/" not in name}

    def read_unrecorded(self, relative_path: str, limit: int) -> bytes:
        self.resolve(relative_path)
        return self.remote.get(relative_path, max_bytes=limit)

    def _fetch(self, info: ArtifactInfo) -> bytes:
        started = time.perf_counter()
        try:
            data = self._get_unless_known_down(info)
        except PredserveError:
            self.telemetry.artifact_fetch_failed()
            raise
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256 or len(data) != info.size_bytes:
            self.telemetry.artifact_fetch_failed()
            raise ArtifactRejected(
                f"object {info.relative_path} in {self.remote.url} does not match its recorded SHA-256 "
                f"(object {digest[:12]}, {len(data)} bytes; recorded {info.sha256[:12]}, {info.size_bytes} bytes)"
            )
        self._place(info.relative_path, data)
        elapsed = time.perf_counter() - started
        self.telemetry.artifact_fetched(len(data), elapsed)
        logger.info(
            "fetched %s (sha256 %s, %d bytes) from %s in %.3fs",
            info.relative_path,
            digest[:12],
            len(data),
            self.remote.url,
            elapsed,
            extra={"event": "fetched", "key": info.relative_path, "sha256": digest[:12], "bytes": len(data)},
        )
        self._evict_over_budget(fresh=info.relative_path)
        return data

    def _get_unless_known_down(self, info: ArtifactInfo) -> bytes:
        """A store that just failed to answer is not asked again for DOWN_SECONDS: a start-up or a sync with many
        sets to fetch then costs one timeout, not one per set; the ticks after that ask again."""
        with self._lock:
            down = self._down
        if down is not None and time.monotonic() < down[0]:
            raise ArtifactStoreUnreachable(f"{down[1]} (not asked again for {DOWN_SECONDS:.0f} s)")
        try:
            return self.remote.get(info.relative_path, max_bytes=info.size_bytes)
        except ArtifactStoreUnreachable as exc:
            self._mark_down(str(exc))
            raise

    def _mark_down(self, reason: str) -> None:
        with self._lock:
            self._down = (time.monotonic() + DOWN_SECONDS, reason)

    def _fetch_quietly(self, info: ArtifactInfo) -> str:
        try:
            self._fetch(info)
        except PredserveError as exc:
            return str(exc)
        return ""

    def _place(self, name: str, data: bytes) -> None:
        """Puts verified bytes in the cache through a temporary file and a rename; a cache that cannot take them
        (full, read-only) costs a fetch next time, nothing else."""
        temp = self.resolve(f"{TEMP_PREFIX}{writer_tag()}~{uuid.uuid4().hex[:8]}~{name}")
        try:
            self._write_durably(temp, data)
            os.replace(temp, self.resolve(name))
        except OSError as exc:
            temp.unlink(missing_ok=True)
            logger.warning("could not keep %s in the cache %s: %s", name, self.root, exc.strerror or exc)

    def _cached_at_size(self, info: ArtifactInfo) -> bool:
        try:
            return self.resolve(info.relative_path).stat().st_size == info.size_bytes
        except (OSError, PredserveError):
            return False

    def _touch(self, name: str) -> None:
        """A file's mtime is its last use: eviction takes the least recently used first."""
        try:
            os.utime(self.resolve(name))
        except OSError:
            pass

    def trim(self) -> None:
        """After a swap: the files it brought in are protected as served now, the others may go."""
        with self._lock:
            self._fresh.clear()
        self._evict_over_budget()

    def _evict_over_budget(self, fresh: str = "") -> None:
        """`fresh` was just written or fetched to be served: it, and those before it that no swap has served
        yet (a set's artifact, then its compiled form), stay until the next swap."""
        if not self.max_bytes:
            return
        with self._lock:
            if fresh:
                self._fresh.add(fresh)
            files = _cached_files(self.root)
            total = sum(size for _, size, _ in files)
            if total <= self.max_bytes:
                return
            protected = {*self._fresh, *self._protected()}
            evicted = []
            for _, size, path in sorted(files):
                if total <= self.max_bytes:
                    break
                if path.name in protected:
                    continue
                path.unlink(missing_ok=True)
                total -= size
                evicted.append(path.name)
            if evicted:
                logger.info("cache over %d bytes: evicted %s", self.max_bytes, ", ".join(evicted))
            if total > self.max_bytes:
                logger.warning(
                    "the cache holds %d bytes, over --cache-max-bytes %d: the sets served now need them",
                    total,
                    self.max_bytes,
                )


def _cached_files(root: Path) -> list[tuple[float, int, Path]]:
    found = []
    for path in root.iterdir():
        if path.name.startswith(TEMP_PREFIX) or not path.name.endswith((SUFFIX, RUNTIME_SUFFIX)):
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        found.append((stat.st_mtime, stat.st_size, path))
    return found


def open_artifact_store(
    models_dir: Path,
    store: str | None,
    signing_key: bytes | None,
    *,
    cache_max_bytes: int,
    timeout_seconds: float,
    retries: int,
    fetch_concurrency: int,
    telemetry: Telemetry,
) -> ArtifactStore:
    """The store --artifact-store names: a directory served in place (by default the models directory), or an
    object store whose cache is the models directory."""
    location = store_location(store) if store else None
    if location is None:
        return ArtifactStore(Path(directory_of(store)) if store else models_dir, signing_key)
    remote = ObjectStore(location, timeout_seconds, retries)
    cache = CachedArtifactStore(models_dir, remote, signing_key, cache_max_bytes, fetch_concurrency, telemetry)
    cache.begin_check()  # beside the migrations and the loads; check_access waits for it
    return cache
