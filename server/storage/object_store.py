"""An S3 bucket (or any S3-compatible service) as the artifact store: put, get, delete and list, each bounded.

Credentials and the endpoint come the standard AWS way (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
AWS_ENDPOINT_URL for a non-AWS service, profiles, IRSA...), never from a flag. Every call has a connect and a
read timeout and a bounded number of retries (--store-timeout, --store-retries), so that a slow or dead
bucket costs a known time. The client is made lazily, and again in each process: boto3 clients, and their
pooled connections, must not cross the fork of --workers.

boto3's errors are mapped to three: ArtifactMissing (no such object), ArtifactStoreRefused (credentials,
permissions, no bucket: configuration) and ArtifactStoreUnreachable (anything that may pass). Messages
name the key and the store's URL, never a credential.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from predserve.server.errors import ArtifactMissing, ArtifactRejected, ArtifactStoreRefused, ArtifactStoreUnreachable

logger = logging.getLogger(__name__)

SCHEMES = ("s3",)
# The start-up check of the credentials: a store that answers does so in milliseconds, and one that does not
# must not hold the start (what is cached serves; the rest is fetched once the store answers).
CHECK_TIMEOUT_SECONDS = 2.0
# The whole listing at start-up, pages and all: past this the store counts as not answering.
LISTING_TIMEOUT_SECONDS = 30.0
# S3 error codes that say the configuration is wrong; a retry cannot help.
_REFUSALS = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "AllAccessDisabled",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "403",
}
_MISSING = {"NoSuchKey", "404", "NotFound"}


class StoreUrlError(ValueError):
    """An --artifact-store value that names no store predserve can use."""


@dataclass(frozen=True)
class StoreLocation:
    bucket: str
    prefix: str  # "" or ends with "/"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        return self.prefix + name


def store_location(value: str) -> StoreLocation | None:
    """The bucket and prefix of an s3:// URL; None for a directory (no scheme, or file://)."""
    parts = urlsplit(value)
    if not parts.scheme or parts.scheme == "file" or len(parts.scheme) == 1:  # "C:" is a drive, not a scheme
        return None
    if parts.scheme not in SCHEMES:
        raise StoreUrlError(
            f"{value!r}: predserve stores artifacts in a directory or in S3 (s3://bucket/prefix, any S3-compatible "
            f"service through AWS_ENDPOINT_URL); {parts.scheme}:// is not supported"
        )
    if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        raise StoreUrlError(f"{value!r} is not s3://bucket/prefix (credentials come from the AWS environment)")
    prefix = parts.path.strip("/")
    return StoreLocation(parts.netloc, f"{prefix}/" if prefix else "")


def directory_of(value: str) -> str:
    """The directory an --artifact-store value names when it is not an object store."""
    return urlsplit(value).path if value.startswith("file://") else value


class ObjectStore:
    def __init__(self, location: StoreLocation, timeout_seconds: float, retries: int) -> None:
        self.location = location
        self.timeout = timeout_seconds
        self.retries = retries
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_pid = 0

    @property
    def url(self) -> str:
        return self.location.url

    def put(self, name: str, data: bytes) -> None:
        with self._calling("store", name):
            self._s3().put_object(Bucket=self.location.bucket, Key=self.location.key(name), Body=data)

    def get(self, name: str, max_bytes: int) -> bytes:
        """The object's bytes; one larger than `max_bytes` is refused before its body is read."""
        with self._calling("fetch", name):
            answer = self._s3().get_object(Bucket=self.location.bucket, Key=self.location.key(name))
            body = answer["Body"]
            try:
                if int(answer.get("ContentLength", 0)) > max_bytes:
                    raise ArtifactRejected(
                        f"object {name} in {self.url} has {answer['ContentLength']} bytes, more than the "
                        f"{max_bytes} expected"
                    )
                return bytes(body.read())
            finally:
                body.close()

    def delete(self, name: str) -> None:
        with self._calling("delete", name):
            self._s3().delete_object(Bucket=self.location.bucket, Key=self.location.key(name))

    def names(self) -> set[str]:
        """Every object under the prefix, as names relative to it (nothing in deeper "directories")."""
        found: set[str] = set()
        with self._calling("list", ""):
            pages = (
                self._s3()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.location.bucket, Prefix=self.location.prefix, Delimiter="/")
            )
            for page in pages:
                found.update(item["Key"][len(self.location.prefix) :] for item in page.get("Contents", ()))
        return found

    def begin_listing(self) -> StartupListing:
        """The start-up check, begun in a child process (see StartupListing), or the one list_early began."""
        early = _EARLY.pop((self.url, os.getpid()), None)
        return early if early is not None else StartupListing(self.url, self.timeout)

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client = self._new_client()
                self._client_pid = os.getpid()
            return self._client

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            retries={"max_attempts": self.retries + 1, "mode": "standard"},
            # The checksums boto3 adds by default since 1.36 are refused by some S3-compatible services; the
            # artifact's SHA-256 recorded in the registry is checked at every read anyway.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of its own: boto3's default one is shared by every client of the process, and not thread-safe.
        return boto3.session.Session().client("s3", config=config)

    @contextlib.contextmanager
    def _calling(self, what: str, name: str) -> Iterator[None]:
        """Maps whatever boto3 raises during one store call to the three errors of this module."""
        try:
            yield
        except (ArtifactRejected, ArtifactStoreRefused):
            raise
        except Exception as exc:
            raise _mapped(exc, self.url, what, name) from exc


class StartupListing:
    """The names under the prefix, listed by a child process with one try of at most CHECK_TIMEOUT_SECONDS a call:
    the check of the credentials at start-up, and what the start-up checks of orphans need.

    A child, so that the server itself does not import boto3 (about 0.25 s of CPU with its first client) while
    everything it serves comes from its cache: the child runs on another core beside the migrations and the
    loads. result() raises ArtifactStoreRefused (bad credentials, no bucket) or ArtifactStoreUnreachable."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__, url, str(min(timeout, CHECK_TIMEOUT_SECONDS))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )

    def result(self) -> set[str]:
        try:
            out, err = self._child.communicate(timeout=LISTING_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.communicate()
            raise ArtifactStoreUnreachable(f"the artifact store {self.url} was not listed in time") from None
        try:
            answer = json.loads(out)
        except ValueError:
            why = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {self._child.returncode}"]
            raise ArtifactStoreUnreachable(f"the artifact store {self.url} could not be listed: {why[0]}") from None
        if "refused" in answer:
            raise ArtifactStoreRefused(answer["refused"])
        if "unreachable" in answer:
            raise ArtifactStoreUnreachable(answer["unreachable"])
        return set(answer["names"])


# Listings begun by list_early, by URL and process, for the ObjectStore that start-up opens later.
_EARLY: dict[tuple[str, int], StartupListing] = {}


def list_early(artifact_store: str | None, timeout: float) -> None:
    """Begins the start-up listing of an s3:// --artifact-store before the server imports its libraries (about a
    second), so that the child's work is done by the time start-up asks for it."""
    location = store_location(artifact_store) if artifact_store else None
    if location is not None:
        _EARLY[(location.url, os.getpid())] = StartupListing(location.url, timeout)


def _list_for_a_parent(url: str, timeout: float) -> dict[str, Any]:
    location = store_location(url)
    assert location is not None
    try:
        return {"names": sorted(ObjectStore(location, timeout, retries=0).names())}
    except ArtifactStoreRefused as exc:
        return {"refused": str(exc)}
    except ArtifactStoreUnreachable as exc:
        return {"unreachable": str(exc)}


def _mapped(exc: Exception, url: str, what: str, name: str) -> Exception:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    target = f"{name} in {url}" if name else url
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ArtifactStoreRefused(
            f"no credentials for the artifact store {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or an AWS profile or role)"
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING or (status == 404 and code != "NoSuchBucket"):
            return ArtifactMissing(f"artifact {name} is missing from the artifact store {url}")
        if code in _REFUSALS or status in (401, 403):
            return ArtifactStoreRefused(
                f"the artifact store {url} refused to {what} {target}: {code or status} (check the bucket, "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and the permissions they carry)"
            )
        return ArtifactStoreUnreachable(f"the artifact store {url} could not {what} {target}: {code or status}")
    return ArtifactStoreUnreachable(f"the artifact store {url} did not answer ({what} {target}): {_short(exc)}")


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


if __name__ == "__main__":  # StartupListing's child: prints one JSON document, never a credential
    print(json.dumps(_list_for_a_parent(sys.argv[1], float(sys.argv[2]))))
