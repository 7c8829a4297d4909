"""The artifact store: fitted pipelines as joblib files in one directory.

Writes are atomic (temporary file, fsync, rename, fsync of the directory) so a database row can
only ever point at a complete file. Every use of a recorded path (read, delete) is confined to the
directory by one check (resolve, and the signature with a key), and reads are verified against the
SHA-256 recorded in the database on the very bytes that are then unpickled, because joblib.load
runs pickle, and pickle runs code. That makes the database the root of trust; with a signing key,
each record also carries an HMAC of its checksum, so that a database write alone is not enough.
The directory may be shared by several replicas (NFS, a ReadWriteMany volume): names are unique,
and a temporary file is named after the host and process writing it, so that one replica starting
up never removes another's write in progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import hmac
import io
import json
import logging
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import joblib

from predserve.server import failpoints
from predserve.server.domain import ArtifactInfo
from predserve.server.errors import (
    ArtifactMissing,
    ArtifactRejected,
    ModelsDirectoryUnwritable,
    PredserveError,
    ResourceExhausted,
    StorageError,
)
from predserve.server.storage.permissions import warn_if_others_can_write
from predserve.server.storage.safe_pickle import load_restricted

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
SUFFIX = ".joblib"
# A compiled form's file (server/runtimes/), named after its artifact.
RUNTIME_SUFFIX = ".runtime"
# Beside an artifact whose Train could not learn whether its commit happened (the database went away during
# it): the names of the Train's files, deleted once the database says no row names them (issue 24).
UNSETTLED_SUFFIX = ".unsettled"
# Imports' temporary copies (up to the import limit, 1 GiB by default): inside the store, so that a crash leaves them
# where start-up sweeps, never in the system temp dir. Named like the writes' temporary files, minus the prefix.
SCRATCH_DIR = ".tmp"
# A temporary file of another host is only known to be abandoned once it is this old; no write takes that long.
STALE_TEMP_SECONDS = 3600.0
_SPACE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class ArtifactStore:
    def __init__(self, root: Path, signing_key: bytes | None = None) -> None:
        self.root = root
        self._signing_key = signing_key

    def prepare(self) -> None:
        """Creates the directory (owner-only) and removes temporary files a crash left behind: those of
        writes, and the imports' copies in SCRATCH_DIR."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        warn_if_others_can_write(
            self.root, "models directory", "they can add, remove or replace artifacts", "chmod 700 it"
        )
        for leftover in self.root.glob(f"{TEMP_PREFIX}*"):
            if _abandoned(leftover, TEMP_PREFIX):
                logger.warning("removing temporary artifact left by an interrupted write: %s", leftover.name)
                leftover.unlink(missing_ok=True)
        scratch = self.root / SCRATCH_DIR
        if _is_real_directory(scratch):
            for leftover in scratch.iterdir():
                if _abandoned(leftover, ""):
                    logger.warning("removing temporary copy left by an interrupted import: %s", leftover.name)
                    leftover.unlink(missing_ok=True)
        elif scratch.is_symlink() or scratch.exists():
            logger.warning("%s is not a directory predserve made (a symlink or a file?); imports will fail", scratch)

    def describe(self) -> str:
        return str(self.root)

    def check_access(self) -> None:
        """Nothing to check before serving: prepare() made the directory (an object store overrides this)."""

    # A directory that is the store has nothing to fetch and keeps every file: an object store's cache overrides
    # these to fetch side by side, to learn which files the sets served need, and to trim itself to its bound.
    def prefetch(self, files: Sequence[ArtifactInfo]) -> None: ...
    def protect(self, names: Callable[[], Collection[str]]) -> None: ...
    def trim(self) -> None: ...

    @contextlib.contextmanager
    def scratch_file(self, data: bytes) -> Iterator[Path]:
        """A private temporary copy of `data` inside the store (for the import probe), removed on exit;
        one a crash leaves behind is removed at the next start-up."""
        scratch = self.root / SCRATCH_DIR
        try:
            scratch.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _storage_error(exc, "create the directory of temporary copies", self.root) from exc
        if not _is_real_directory(scratch):
            raise StorageError(f"{scratch} is not a directory predserve made (a symlink?); refusing to write there")
        path = self.resolve(f"{SCRATCH_DIR}/{writer_tag()}~{uuid.uuid4().hex}{SUFFIX}")
        try:
            try:
                self._write_durably(path, data, sync=False)  # read once by the probe, never kept: no fsync
            except OSError as exc:
                raise _storage_error(exc, "write the temporary copy of the artifact", self.root) from exc
            yield path
        finally:
            path.unlink(missing_ok=True)

    def write(self, pipeline: Any, model_type: str) -> tuple[ArtifactInfo, bytes]:
        """Persists a pipeline under a new unique name; returns where, and the exact bytes written."""
        return self.write_bytes(_serialize(pipeline), model_type)

    def write_bytes(self, data: bytes, model_type: str) -> tuple[ArtifactInfo, bytes]:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{model_type}-{stamp}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        return self._write_named(name, data, model_type), data

    def write_runtime(self, artifact: ArtifactInfo, runtime_name: str, data: bytes, model_type: str) -> ArtifactInfo:
        """Persists the compiled form of an artifact beside it, with the same guarantees (atomic, checksummed,
        signed): `<artifact name>.<runtime>.runtime`, never a name the artifacts or their orphans use."""
        stem = artifact.relative_path.removesuffix(SUFFIX)
        return self._write_named(f"{stem}.{runtime_name}{RUNTIME_SUFFIX}", data, model_type)

    def _write_named(self, name: str, data: bytes, model_type: str) -> ArtifactInfo:
        temp = self.resolve(f"{TEMP_PREFIX}{writer_tag()}~{name}")
        final = self.resolve(name)
        try:
            self._write_durably(temp, data)
            failpoints.reach(failpoints.AFTER_TEMP_WRITE)
            if final.exists():  # a uuid collision; never overwrite another artifact
                raise StorageError(f"artifact {name} already exists")
            os.replace(temp, final)
            _fsync_directory(self.root)
        except OSError as exc:
            _remove_quietly(temp)
            raise _storage_error(exc, "write the model artifact", self.root) from exc
        except BaseException:
            _remove_quietly(temp)
            raise
        failpoints.reach(failpoints.AFTER_RENAME)
        info = ArtifactInfo(name, hashlib.sha256(data).hexdigest(), len(data))
        if self._signing_key is not None:
            info = dataclasses.replace(info, signature=artifact_signature(self._signing_key, model_type, info))
        return info

    def discard(self, relative_path: str) -> None:
        """Removes a file of the store, confined by resolve: a path leading outside raises ArtifactRejected
        and nothing is touched. unlink never follows the last component, so a symlink inside the store that
        points inside is removed itself, never its target; one that points outside fails resolve and stays."""
        path = self.resolve(relative_path)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove artifact %s: %s", relative_path, exc)

    def discard_recorded(self, info: ArtifactInfo, model_type: str) -> None:
        """Removes a recorded set's file after the very checks loading applies (see locate)."""
        self.locate(info, model_type)
        self.discard(info.relative_path)

    def locate(self, info: ArtifactInfo, model_type: str) -> Path:
        """Where a recorded artifact is, refused (ArtifactRejected) unless its row is signed, when the store
        has a key, and its path stays inside the store: the one check of every use of a recorded path."""
        self._check_signature(info, model_type)
        return self.resolve(info.relative_path)

    def read_verified(self, info: ArtifactInfo, model_type: str) -> bytes:
        """The artifact's bytes, refused unless they are exactly the recorded (and signed) ones."""
        self._check_signature(info, model_type)
        data = self._read_confined(info.relative_path, size=info.size_bytes)  # confined by resolve, as locate is
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            raise ArtifactRejected(
                f"artifact {info.relative_path} does not match its recorded SHA-256 "
                f"(file {digest[:12]}, recorded {info.sha256[:12]})"
            )
        return data

    def read_unrecorded(self, relative_path: str, limit: int) -> bytes:
        """The bytes of a file no row records (an orphan), read with the same confinement as any other and
        refused above `limit` before a byte is read; nothing vouches for them, so they go through the import
        path before anything loads them."""
        return self._read_confined(relative_path, limit=limit)

    def _read_confined(self, relative_path: str, *, size: int | None = None, limit: int | None = None) -> bytes:
        """A file of the store opened as the file it claims to be: never through a symlink, never blocking (a FIFO
        opens at once and is refused), and read only once fstat shows a regular file of the recorded `size`
        (or at most `limit` bytes): a FIFO, device or socket, or a sparse file of terabytes, costs nothing."""
        path = self.resolve(relative_path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"artifact {relative_path} is missing") from exc
        except OSError as exc:
            why = "it is a symlink, which is never followed" if exc.errno == errno.ELOOP else exc.strerror
            raise ArtifactRejected(f"artifact {relative_path} cannot be read: {why}") from exc
        try:
            found = os.fstat(fd)
            _check_file(relative_path, found, size, limit)
            return _read_exactly(fd, relative_path, found.st_size)
        except OSError as exc:
            raise ArtifactRejected(f"artifact {relative_path} cannot be read: {exc.strerror}") from exc
        finally:
            os.close(fd)

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

    def mark_unsettled(self, files: Sequence[ArtifactInfo]) -> None:
        """Notes, durably, that these files of one Train wait for the database to say whether a row names them."""
        marker = self.resolve(files[0].relative_path + UNSETTLED_SUFFIX)
        with contextlib.suppress(FileExistsError):
            self._write_durably(marker, json.dumps([file.relative_path for file in files]).encode())

    def unsettled(self) -> dict[str, list[str]]:
        """Each artifact marked unsettled, with the names of its Train's files (itself first)."""
        found = {}
        for marker in self.root.glob(f"*{SUFFIX}{UNSETTLED_SUFFIX}"):
            name = marker.name.removesuffix(UNSETTLED_SUFFIX)
            try:
                files = [str(file) for file in json.loads(marker.read_text())]
            except (OSError, ValueError):  # torn or unreadable: at least the artifact itself
                files = [name]
            found[name] = files
        return found

    def settle(self, artifact_name: str, files: Sequence[str], recorded: bool) -> None:
        """A Train's files once the database has answered: kept with their set when a row names the artifact,
        else deleted; the marker goes either way."""
        if not recorded:
            for file in files:
                self.discard(file)
        self.discard(artifact_name + UNSETTLED_SUFFIX)

    def stored_names(self) -> set[str]:
        """The artifacts' names; not recursive, so the temporary copies in SCRATCH_DIR are never among them."""
        return {p.name for p in self.root.glob(f"*{SUFFIX}") if not p.name.startswith(TEMP_PREFIX)}

    @staticmethod
    def _write_durably(path: Path, data: bytes, sync: bool = True) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)


def writer_tag() -> str:
    """How a temporary file names the process writing it, so that start-up removes only abandoned ones."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _is_real_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


# A models directory that cannot take a file now, though nothing is wrong with the file: remounted read-only,
# permissions taken away, the directory (or its mount) gone. Another replica, or this one later, can train.
_UNWRITABLE_ERRORS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ESTALE}


def _remove_quietly(path: Path) -> None:
    """Removes a file of a failed write, if it can: on a read-only file system it cannot, nor need it."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _storage_error(exc: OSError, what: str, root: Path | None = None) -> PredserveError:
    if exc.errno in _SPACE_ERRORS:
        return ResourceExhausted(f"no space left to {what} ({exc.strerror})")
    if root is not None and exc.errno in _UNWRITABLE_ERRORS:
        return ModelsDirectoryUnwritable(
            f"this replica cannot {what}: its models directory {root} {_why_unwritable(exc)} ({exc.strerror})"
        )
    return StorageError(f"could not {what}: {exc.strerror or exc}")


def _why_unwritable(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "is on a read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "does not let this process write"
    return "is gone"


def unwritable_reason(root: Path) -> str | None:
    """Why nothing can be written in the models directory now, or None: what health says before a Train."""
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return f"{root} is on a read-only file system"
    except OSError as exc:
        return f"{root} is gone ({exc.strerror})"
    if not os.access(root, os.W_OK | os.X_OK):
        return f"{root} does not let this process write"
    return None


def _abandoned(temp: Path, prefix: str) -> bool:
    """Whether a temporary file's writer is gone: a dead process of this host, or a long-silent other host."""
    name = temp.name.removeprefix(prefix)
    owner, _, _ = name.partition("~")
    pid_text, _, host = owner.partition("@")
    if not host or not pid_text.isdigit():
        # Not named after its writer: an artifact's name is a temporary file of a version that did not name them
        # so, and abandoned; any other is not predserve's (a --models-dir given a directory of other files, whose
        # .tmp/ holds someone else's), and stays.
        return _STORED_NAME.match(name) is not None
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


_STORED_NAME = re.compile(r"^(?P<model_type>.+)-\d{8}T\d{6}Z-[0-9a-f]{12}" + re.escape(SUFFIX) + "$")


def model_type_of(stored_name: str) -> str | None:
    """The model type an artifact's file name was written for (write_bytes names them), if it is one of ours."""
    match = _STORED_NAME.match(stored_name)
    return match.group("model_type") if match else None


def artifact_signature(key: bytes, model_type: str, info: ArtifactInfo) -> str:
    """Hex HMAC-SHA256 binding an artifact's checksum to its size, file name and model type."""
    message = json.dumps(["predserve-artifact-v1", model_type, info.relative_path, info.sha256, info.size_bytes])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def load_pipeline(data: bytes, trusted_modules: tuple[str, ...] = ()) -> Any:
    """Unpickles verified bytes through the allow-list of server/storage/safe_pickle.py, so that no code
    but that of scikit-learn, NumPy, SciPy and `trusted_modules` runs; callers must have checked the bytes
    with read_verified. Raises ForbiddenGlobal naming the first global outside the list."""
    return load_restricted(data, trusted_modules)


def _serialize(pipeline: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    return buffer.getvalue()


def _check_file(relative_path: str, found: os.stat_result, size: int | None, limit: int | None) -> None:
    if not stat.S_ISREG(found.st_mode):
        raise ArtifactRejected(f"artifact {relative_path} is not a regular file but a {_file_kind(found.st_mode)}")
    if found.st_mode & stat.S_IWOTH:
        raise ArtifactRejected(
            f"artifact {relative_path} is world-writable (mode {stat.S_IMODE(found.st_mode):04o}): "
            "anyone could have replaced it"
        )
    if size is not None and found.st_size != size:
        raise ArtifactRejected(f"artifact {relative_path} has {found.st_size} bytes, the database recorded {size}")
    if limit is not None and found.st_size > limit:
        raise ArtifactRejected(f"artifact {relative_path} has {found.st_size} bytes, over the import limit of {limit}")


def _read_exactly(fd: int, relative_path: str, size: int) -> bytes:
    """The file's `size` bytes, in one allocation where one read returns them all (a regular file below 2 GiB);
    one that grew or shrank while read (another writer) is refused."""
    data = os.read(fd, size)
    if len(data) < size:  # a short read: gather the rest
        parts = [data]
        while (filled := sum(map(len, parts))) < size:
            chunk = os.read(fd, size - filled)
            if not chunk:
                raise ArtifactRejected(f"artifact {relative_path} shrank while it was read: not loaded")
            parts.append(chunk)
        data = b"".join(parts)
    if os.read(fd, 1):
        raise ArtifactRejected(f"artifact {relative_path} grew while it was read: not loaded")
    return data


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
