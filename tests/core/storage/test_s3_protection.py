"""S3 server-side encryption on every write path, and the bucket protection that verification
reports (versioning, Object Lock), against moto's server over HTTP."""

from __future__ import annotations

import os

import boto3
import pytest

from tasks.core.errors import ConfigError
from tasks.core.storage.s3 import S3Storage


@pytest.mark.parametrize(
    ("sse", "kms"), [("AES256", None), ("aws:kms", None), ("aws:kms", "alias/dr-backups")]
)
def test_every_write_asks_for_server_side_encryption(
    bucket: str, sse: str, kms: str | None
) -> None:
    s3 = S3Storage(bucket, "p", sse=sse, kms_key_id=kms)
    s3.put("small", b"x" * 10)
    w = s3.open_writer("big")  # multipart: more than one part
    w.write(os.urandom(17 << 20))
    w.commit()
    client = boto3.client("s3")
    for key in ("p/small", "p/big"):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == sse
        if kms:
            assert kms in head["SSEKMSKeyId"]


@pytest.mark.parametrize(
    ("sse", "kms", "message"),
    [("aes", None, "unknown S3 server-side encryption"), ("AES256", "k", "needs")],
)
def test_bad_sse_settings_are_config_errors(
    sse: str, kms: str | None, message: str, moto_endpoint: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        S3Storage("b", sse=sse, kms_key_id=kms)


def test_protection_of_a_plain_bucket(bucket: str) -> None:
    p = S3Storage(bucket).protection()
    assert (p.versioning, p.object_lock, p.immutable) == ("Off", False, False)
    assert "versioning off, no Object Lock" in p.describe()


def test_protection_of_a_versioned_bucket_without_lock(bucket: str) -> None:
    boto3.client("s3").put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    p = S3Storage(bucket).protection()
    assert (p.versioning, p.object_lock, p.immutable) == ("Enabled", False, False)


def test_protection_of_a_locked_bucket(moto_endpoint: str) -> None:
    client = boto3.client("s3")
    name = f"dr-locked-{os.getpid()}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    assert not S3Storage(name).protection().immutable  # lock on, but no default retention
    client.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 35}},
        },
    )
    p = S3Storage(name).protection()
    assert (p.versioning, p.object_lock, p.lock_mode, p.lock_days) == (
        "Enabled",
        True,
        "COMPLIANCE",
        35,
    )
    assert p.immutable
    assert "Object Lock COMPLIANCE 35 days" in p.describe()
