"""An S3 bucket (or any S3-compatible store) as a backup location.

Credentials, region and endpoint come only from boto3's default chain (environment, profile,
instance role); ``AWS_ENDPOINT_URL`` points it at an S3-compatible store. Large objects are
written by multipart upload from a stream: parts are uploaded by a background thread while the
caller produces the next one, with at most ``_QUEUE_PARTS`` parts buffered (memory stays bounded
whatever the backup size). Nothing is visible under the key until ``commit`` completes the upload.

A read that loses its connection in the middle of the body (botocore retries only while a request
is being sent) resumes where it stopped: a ranged GET pinned to the first response's ETag, so the
pieces of two different objects are never stitched together.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.exceptions as bexc
import urllib3.exceptions
from botocore.config import Config

from tasks.core.aws import aws_errors
from tasks.core.errors import ConfigError, PermanentError, TransientError
from tasks.core.storage import CHUNK, ObjectInfo

__all__ = ["READ_RESUMES", "SSE_MODES", "BucketProtection", "ObjectLock", "S3Storage"]

PART_SIZE = 16 * CHUNK  # S3 needs >= 5 MiB per part; 16 MiB x 10,000 parts = 160 GiB per object
_QUEUE_PARTS = 2
READ_RESUMES = 5  # a read gives up after this many lost connections in a row without progress
_RESUME_BACKOFF = 0.25  # seconds before the first resume; doubles at each failure in a row
# What a connection lost in the middle of a response body looks like through botocore/urllib3
_BODY_ERRORS = (
    bexc.ResponseStreamingError,
    bexc.IncompleteReadError,
    bexc.ReadTimeoutError,
    bexc.ConnectionClosedError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
)


def s3_errors(what: str, bucket: str) -> contextlib.AbstractContextManager[None]:
    return aws_errors(
        "S3",
        what,
        {"NoSuchBucket": f"S3 bucket {bucket!r} does not exist: create it or fix --s3-bucket"},
    )


class _MultipartWriter:
    """Buffers PART_SIZE bytes, hands full parts to an uploader thread, completes at commit."""

    def __init__(self, store: S3Storage, key: str) -> None:
        self._store, self._key = store, key
        self._full_key = store.full_key(key)
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._next_part = 0
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=_QUEUE_PARTS)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._done = False

    def _start(self) -> None:
        with s3_errors(f"start upload of {self._key}", self._store.bucket):
            resp = self._store.client.create_multipart_upload(
                Bucket=self._store.bucket, Key=self._full_key, **self._store.sse_args
            )
        self._upload_id = resp["UploadId"]
        self._thread = threading.Thread(
            target=self._upload_loop, daemon=True, name=f"s3-upload-{self._key}"
        )
        self._thread.start()

    def _upload_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the writer will raise the first error
            number, body = item
            try:
                with s3_errors(f"upload part {number} of {self._key}", self._store.bucket):
                    resp = self._store.client.upload_part(
                        Bucket=self._store.bucket,
                        Key=self._full_key,
                        UploadId=self._upload_id,
                        PartNumber=number,
                        Body=body,
                    )
                self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            except BaseException as exc:  # handed to the writing thread, raised there
                self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _send(self, body: bytes) -> None:
        if self._upload_id is None:
            self._start()
        self._raise_if_failed()
        self._next_part += 1
        self._queue.put((self._next_part, body))

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= PART_SIZE:
            body = bytes(self._buf)
            self._buf.clear()
            self._send(body)

    def commit(self) -> ObjectInfo:
        bucket = self._store.bucket
        if self._upload_id is None:  # small object: one PUT
            self._done = True
            return self._store.put(self._key, bytes(self._buf))
        if self._buf:
            self._send(bytes(self._buf))
            self._buf.clear()
        self._queue.put(None)
        assert self._thread is not None
        self._thread.join()
        try:
            self._raise_if_failed()
            parts = sorted(self._parts, key=lambda p: p["PartNumber"])
            with s3_errors(f"complete upload of {self._key}", bucket):
                self._store.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self._full_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            self.abort()
            raise
        self._done = True
        info = self._store.stat(self._key)
        if info is None:
            raise PermanentError(f"S3 lost {self._key} right after the upload completed")
        return info

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._thread is not None and self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._thread.join(timeout=60)
        if self._upload_id is not None:
            with contextlib.suppress(Exception):  # best effort: the sweeper aborts stale uploads
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._full_key, UploadId=self._upload_id
                )


SSE_MODES = ("AES256", "aws:kms")


@dataclass(frozen=True)
class BucketProtection:
    """What the bucket itself does against deletion and overwriting (verification reports it)."""

    bucket: str
    versioning: str  # "Enabled", "Suspended" or "Off"
    object_lock: bool
    lock_mode: str | None = None  # "GOVERNANCE" / "COMPLIANCE" default retention, if any
    lock_days: int | None = None

    @property
    def immutable(self) -> bool:
        """Objects cannot be destroyed before their retention ends: Object Lock (which needs
        versioning) with a default retention."""
        return self.versioning == "Enabled" and self.object_lock and self.lock_mode is not None

    def describe(self) -> str:
        lock = (
            f"Object Lock {self.lock_mode} {self.lock_days} days"
            if self.lock_mode
            else ("Object Lock on, no default retention" if self.object_lock else "no Object Lock")
        )
        return f"s3://{self.bucket}: versioning {self.versioning.lower()}, {lock}"


@dataclass(frozen=True)
class ObjectLock:
    """What S3 Object Lock says about the current version of one object."""

    until: datetime | None  # RetainUntilDate (UTC) of its retention, if it has one
    mode: str | None  # GOVERNANCE or COMPLIANCE, with ``until``
    legal_hold: bool

    def active(self, now: datetime) -> bool:
        """Whether S3 refuses to delete the version at ``now``."""
        return self.legal_hold or (self.until is not None and self.until > now)

    def describe(self, now: datetime) -> str:
        """``locked until 2027-01-03T00:00Z (Object Lock COMPLIANCE)``, ``under legal hold``."""
        parts = []
        if self.until is not None and self.until > now:
            parts.append(f"locked until {self.until:%Y-%m-%dT%H:%MZ} (Object Lock {self.mode})")
        if self.legal_hold:
            parts.append("under legal hold (Object Lock)")
        return " and ".join(parts) or "not locked"


class S3Storage:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "database-backups",
        client: Any | None = None,
        *,
        sse: str | None = None,
        kms_key_id: str | None = None,
    ) -> None:
        """``sse``: server-side encryption asked for on every write ("AES256" = SSE-S3,
        "aws:kms" = SSE-KMS with ``kms_key_id`` or the account's default KMS key)."""
        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid S3 bucket name {bucket!r}: give the bare bucket name")
        if sse is not None and sse not in SSE_MODES:
            raise ConfigError(f"unknown S3 server-side encryption {sse!r}: use AES256 or aws:kms")
        if kms_key_id and sse != "aws:kms":
            raise ConfigError("an S3 KMS key id needs server-side encryption aws:kms")
        self.sse_args: dict[str, str] = {}
        if sse:
            self.sse_args["ServerSideEncryption"] = sse
        if kms_key_id:
            self.sse_args["SSEKMSKeyId"] = kms_key_id
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._checked = False
        self.client = client or boto3.client(
            "s3",
            config=Config(
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=10,
                read_timeout=120,
            ),
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def open_writer(self, key: str) -> _MultipartWriter:
        """Checks the bucket first (once): a bucket that does not exist or cannot be written
        is a ConfigError before any byte is produced, not a failure half-way."""
        if not self._checked:
            try:
                with s3_errors("check the bucket", self.bucket):
                    self.client.head_bucket(Bucket=self.bucket)
            except FileNotFoundError:  # HEAD has no body: a missing bucket is a bare 404
                raise ConfigError(
                    f"S3 bucket {self.bucket!r} does not exist: create it or fix --s3-bucket"
                ) from None
            self._checked = True
        return _MultipartWriter(self, key)

    def put(self, key: str, data: bytes) -> ObjectInfo:
        with s3_errors(f"write {key}", self.bucket):
            self.client.put_object(
                Bucket=self.bucket, Key=self.full_key(key), Body=data, **self.sse_args
            )
        info = self.stat(key)
        if info is None:
            raise PermanentError(f"S3 lost {key} right after writing it")
        return info

    def get(self, key: str) -> Iterator[bytes]:
        """Streams the object. A connection lost in the middle of the body is resumed from the
        last byte received (``Range``), only while the object is still the one first read
        (``IfMatch`` its ETag), after an exponential backoff; READ_RESUMES losses in a row
        without a byte of progress end in TransientError. A replaced object: PermanentError."""
        what, full = f"read {key}", self.full_key(key)
        with s3_errors(what, self.bucket):
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            etag, size = resp["ETag"], int(resp["ContentLength"])
            offset = failures = 0
            while True:
                body = resp["Body"]
                try:
                    for chunk in body.iter_chunks(CHUNK):
                        offset += len(chunk)
                        failures = 0
                        yield chunk
                    return
                except _BODY_ERRORS as exc:
                    failures += 1
                    if failures > READ_RESUMES:
                        raise TransientError(
                            f"S3 connection lost {failures} times in a row while trying to "
                            f"{what} (at byte {offset}): {exc}"
                        ) from exc
                finally:
                    body.close()
                if offset >= size:  # lost after the last byte: nothing left to ask for
                    return
                time.sleep(_RESUME_BACKOFF * 2 ** (failures - 1))
                try:
                    resp = self.client.get_object(
                        Bucket=self.bucket, Key=full, Range=f"bytes={offset}-", IfMatch=etag
                    )
                except bexc.ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                        raise
                    raise PermanentError(
                        f"S3 object {key} was replaced while it was being read: read it again"
                    ) from exc

    def read(self, key: str) -> bytes:
        return b"".join(self.get(key))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with s3_errors(f"stat {key}", self.bucket):
                head = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].astimezone(UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self.full_key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        with s3_errors("list backups", self.bucket):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        self._rel(obj["Key"]), int(obj["Size"]), obj["LastModified"].astimezone(UTC)
                    )

    def lock_status(self, key: str) -> ObjectLock | None:
        """The Object Lock retention and legal hold of the current version of ``key`` (None:
        neither, or no such object). Only what HEAD returns: the caller needs the
        s3:GetObjectRetention and s3:GetObjectLegalHold permissions, or S3 leaves them out."""
        try:
            with s3_errors(f"read the Object Lock of {key}", self.bucket):
                head = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except FileNotFoundError:
            return None
        until = head.get("ObjectLockRetainUntilDate")
        hold = head.get("ObjectLockLegalHoldStatus") == "ON"
        if until is None and not hold:
            return None
        return ObjectLock(
            None if until is None else until.astimezone(UTC), head.get("ObjectLockMode"), hold
        )

    def delete(self, key: str) -> None:
        with s3_errors(f"delete {key}", self.bucket):
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))

    def protection(self) -> BucketProtection:
        """The bucket's versioning and Object Lock settings."""
        with s3_errors("read the bucket's versioning", self.bucket):
            versioning = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status", "Off")
        try:
            with s3_errors("read the bucket's Object Lock configuration", self.bucket):
                lock = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except FileNotFoundError:  # no Object Lock configuration at all
            return BucketProtection(self.bucket, versioning, False)
        conf = lock.get("ObjectLockConfiguration", {})
        rule = conf.get("Rule", {}).get("DefaultRetention", {})
        days = rule.get("Days") or (rule["Years"] * 365 if rule.get("Years") else None)
        return BucketProtection(
            self.bucket,
            versioning,
            conf.get("ObjectLockEnabled") == "Enabled",
            rule.get("Mode"),
            days,
        )

    def abort_stale_uploads(self, older_than: Any) -> int:
        """Abort multipart uploads under the prefix started before ``older_than`` (a datetime)."""
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        with s3_errors("list unfinished uploads", self.bucket):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key("")):
                for up in page.get("Uploads", []):
                    if up["Initiated"].astimezone(UTC) < older_than:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        aborted += 1
        return aborted
