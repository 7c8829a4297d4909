"""The artifact store: fitted pipelines as joblib files in one directory.

Writes are atomic (temporary file, fsync, rename, fsync of the directory) so a database row can
only ever point at a complete file. Reads are confined to the directory and verified against the
SHA-256 recorded in the database on the very bytes that are then unpickled, because joblib.load
runs pickle, and pickle runs code. That makes the database the root of trust; with a signing key,
each record also carries an HMAC of its checksum, so that a database write alone is not enough.
The directory may be shared by several replicas (NFS, a ReadWriteMany volume): names are unique,
and a temporary file is named after the host and process writing it, so that one replica starting
up never removes another's write in progress.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import hmac
import io
import json
import logging
import os
import socket
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import joblib

from server import failpoints
from server.domain import ArtifactInfo
from server.errors import ArtifactMissing, ArtifactRejected, ResourceExhausted, StorageError
from server.storage.permissions import warn_if_others_can_write

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
SUFFIX = ".joblib"
# A temporary file of another host is only known to be abandoned once it is this old; no write takes that long.
STALE_TEMP_SECONDS = 3600.0
_SPACE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class ArtifactStore:
    def __init__(self, root: Path, signing_key: bytes | None = None) -> None:
        self.root = root
        self._signing_key = signing_key

    def prepare(self) -> None:
        """Creates the directory (owner-only) and removes temporary files a crash left behind."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        warn_if_others_can_write(
            self.root, "models directory", "they can add, remove or replace artifacts", "chmod 700 it"
        )
        for leftover in self.root.glob(f"{TEMP_PREFIX}*"):
            if _abandoned(leftover):
                logger.warning("removing temporary artifact left by an interrupted write: %s", leftover.name)
                leftover.unlink(missing_ok=True)

    def write(self, pipeline: Any, model_type: str) -> tuple[ArtifactInfo, bytes]:
        """Persists a pipeline under a new unique name; returns where, and the exact bytes written."""
        return self.write_bytes(_serialize(pipeline), model_type)

    def write_bytes(self, data: bytes, model_type: str) -> tuple[ArtifactInfo, bytes]:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{model_type}-{stamp}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        temp = self.root / f"{TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}~{name}"
        final = self.root / name
        try:
            self._write_durably(temp, data)
            failpoints.reach(failpoints.AFTER_TEMP_WRITE)
            if final.exists():  # a uuid collision; never overwrite another artifact
                raise StorageError(f"artifact {name} already exists")
            os.replace(temp, final)
            _fsync_directory(self.root)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in _SPACE_ERRORS:
                raise ResourceExhausted(f"no space left to write the model artifact ({exc.strerror})") from exc
            raise StorageError(f"could not write the model artifact: {exc.strerror or exc}") from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        failpoints.reach(failpoints.AFTER_RENAME)
        info = ArtifactInfo(name, hashlib.sha256(data).hexdigest(), len(data))
        if self._signing_key is not None:
            info = dataclasses.replace(info, signature=artifact_signature(self._signing_key, model_type, info))
        return info, data

    def discard(self, relative_path: str) -> None:
        """Removes an artifact that no row points at (its registration failed)."""
        try:
            (self.root / relative_path).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove unregistered artifact %s: %s", relative_path, exc)

    def read_verified(self, info: ArtifactInfo, model_type: str) -> bytes:
        """The artifact's bytes, refused unless they are exactly the recorded (and signed) ones."""
        self._check_signature(info, model_type)
        path = self.resolve(info.relative_path)
        try:
            with open(path, "rb", opener=_open_no_follow) as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise ArtifactRejected(f"artifact {info.relative_path} is not a regular file")
                if mode & stat.S_IWOTH:
                    raise ArtifactRejected(
                        f"artifact {info.relative_path} is world-writable (mode {stat.S_IMODE(mode):04o}): "
                        "anyone could have replaced it"
                    )
                data = handle.read()
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"artifact {info.relative_path} is missing") from exc
        except OSError as exc:
            raise ArtifactRejected(f"artifact {info.relative_path} cannot be read: {exc.strerror}") from exc
        if len(data) != info.size_bytes:
            raise ArtifactRejected(
                f"artifact {info.relative_path} has {len(data)} bytes, the database recorded {info.size_bytes}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            raise ArtifactRejected(
                f"artifact {info.relative_path} does not match its recorded SHA-256 "
                f"(file {digest[:12]}, recorded {info.sha256[:12]})"
            )
        return data

    def _check_signature(self, info: ArtifactInfo, model_type: str) -> None:
        if self._signing_key is None:
            return
        if not info.signature:
            raise ArtifactRejected(
                f"artifact {info.relative_path} has no signature, and the server has an artifact HMAC key: "
                "the set was recorded without the key, or its row was written by something other than predserve"
            )
        expected = artifact_signature(self._signing_key, model_type, info)
        if not hmac.compare_digest(info.signature.encode(), expected.encode()):
            raise ArtifactRejected(
                f"artifact {info.relative_path} has an invalid signature: its row was not written by predserve "
                "with this artifact HMAC key (forged or altered checksum, path or model type, or another key)"
            )

    def resolve(self, relative_path: str) -> Path:
        """The artifact's place inside the store; anything that would lead outside is refused."""
        candidate = Path(relative_path)
        if candidate.is_absolute() or ".." in candidate.parts or not relative_path:
            raise ArtifactRejected(f"artifact path {relative_path!r} is not a plain name inside the models directory")
        root = self.root.resolve()
        resolved = (root / candidate).resolve()
        if resolved.parent != root and root not in resolved.parents:
            raise ArtifactRejected(f"artifact path {relative_path!r} leads outside the models directory")
        return root / candidate

    def stored_names(self) -> set[str]:
        return {p.name for p in self.root.glob(f"*{SUFFIX}") if not p.name.startswith(TEMP_PREFIX)}

    @staticmethod
    def _write_durably(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)


def _abandoned(temp: Path) -> bool:
    """Whether a temporary file's writer is gone: a dead process of this host, or a long-silent other host."""
    owner, _, _ = temp.name.removeprefix(TEMP_PREFIX).partition("~")
    pid_text, _, host = owner.partition("@")
    if not host or not pid_text.isdigit():
        return True  # not named by a writer that could still be running
    if host == socket.gethostname():
        return int(pid_text) == os.getpid() or not _process_exists(int(pid_text))
    try:
        return time.time() - temp.stat().st_mtime > STALE_TEMP_SECONDS
    except FileNotFoundError:
        return False


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def artifact_signature(key: bytes, model_type: str, info: ArtifactInfo) -> str:
    """Hex HMAC-SHA256 binding an artifact's checksum to its size, file name and model type."""
    message = json.dumps(["predserve-artifact-v1", model_type, info.relative_path, info.sha256, info.size_bytes])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def load_pipeline(data: bytes) -> Any:
    """Unpickles verified bytes; callers must have checked them with read_verified."""
    return joblib.load(io.BytesIO(data))


def _serialize(pipeline: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    return buffer.getvalue()


def _open_no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
