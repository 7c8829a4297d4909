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
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from server.errors import ArtifactMissing, ArtifactRejected, ArtifactStoreRefused, ArtifactStoreUnreachable

logger = logging.getLogger(__name__)

SCHEMES = ("s3",)
# The start-up check of the credentials: a store that answers does so in milliseconds, and one that does not
# must not hold the start (what is cached serves; the rest is fetched once the store answers).
CHECK_TIMEOUT_SECONDS = 2.0
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
        self._session_of: dict[int, Any] = {}

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

    def check_access(self) -> None:
        """One cheap authenticated call, tried once within CHECK_TIMEOUT_SECONDS: raises ArtifactStoreRefused for
        bad credentials or a missing bucket, ArtifactStoreUnreachable when the store does not answer at once."""
        with self._calling("list", ""):
            client = self._new_client(min(self.timeout, CHECK_TIMEOUT_SECONDS), retries=0)
            client.list_objects_v2(Bucket=self.location.bucket, Prefix=self.location.prefix, MaxKeys=1)

    def connect(self) -> None:
        """Makes this process's client now rather than at the first fetch."""
        self._s3()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client = self._new_client(self.timeout, self.retries)
                self._client_pid = os.getpid()
            return self._client

    def _new_client(self, timeout: float, retries: int) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": retries + 1, "mode": "standard"},
            # The checksums boto3 adds by default since 1.36 are refused by some S3-compatible services; the
            # artifact's SHA-256 recorded in the registry is checked at every read anyway.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return self._session(boto3).client("s3", config=config)

    def _session(self, boto3: Any) -> Any:
        """One session per process: its clients share the S3 service description, read once (~100 ms)."""
        if self._session_of.get(os.getpid()) is None:
            self._session_of = {os.getpid(): boto3.session.Session()}
        return self._session_of[os.getpid()]

    @contextlib.contextmanager
    def _calling(self, what: str, name: str) -> Iterator[None]:
        """Maps whatever boto3 raises during one store call to the three errors of this module."""
        try:
            yield
        except (ArtifactRejected, ArtifactStoreRefused):
            raise
        except Exception as exc:
            raise _mapped(exc, self.url, what, name) from exc


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
