"""Security from the command line, as a user runs it: encrypted backups (the key from
$DR_ENCRYPTION_KEY), S3 server-side encryption, immutability checks and the audit trail."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import boto3
import pytest

from tasks.core.sampledata import create_sqlite_app_db
from tests.conftest import run_dr

KEY = base64.b64encode(os.urandom(32)).decode()
OTHER = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    db = tmp_path / "app.db"
    create_sqlite_app_db(db, users=40)
    return db


def _error_line(r: object) -> str:
    stderr = r.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    return stderr


def test_encrypted_backup_verify_restore_and_audit(tmp_path: Path, app_db: Path) -> None:
    backups = str(tmp_path / "backups")
    url = f"sqlite:///{app_db}"
    key_env = {"DR_ENCRYPTION_KEY": KEY}
    r = run_dr("backup", "--database-url", url, "--backup-dir", backups, "--json", env=key_env)
    assert r.returncode == 0, r.stderr
    backup_id = json.loads(r.stdout)["backup_id"]
    manifest = json.loads((tmp_path / "backups" / backup_id / "manifest.json").read_text())
    assert manifest["artefacts"][0]["encryption"]["scheme"] == "aes-256-gcm-stream-v1"
    assert KEY not in r.stdout + r.stderr

    no_key = {"DR_ENCRYPTION_KEY": ""}
    r = run_dr("backup", "--verify-only", "--backup-dir", backups, env=no_key)
    assert r.returncode == 0, r.stderr
    assert "contents not checked" in r.stdout

    restore = ["restore", "--database-url", url, "--backup-dir", backups, "--latest", "--confirm"]
    r = run_dr(*restore, env=no_key)
    assert r.returncode == 2
    assert "is encrypted (key id" in _error_line(r)
    r = run_dr(*restore, env={"DR_ENCRYPTION_KEY": OTHER})
    assert r.returncode == 2
    assert "give the backup's key" in _error_line(r)
    r = run_dr(*restore, env={"DR_ENCRYPTION_KEY": "not-a-key"})
    assert r.returncode == 2
    assert "openssl rand -base64 32" in _error_line(r)
    r = run_dr(*restore, env=key_env)
    assert r.returncode == 0, r.stderr

    r = run_dr("audit", "--backup-dir", backups, "--json")
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)["records"]
    assert [(x["action"], x["outcome"] == "ok") for x in records] == [
        ("restore", False),
        ("restore", False),
        ("restore", True),
    ]
    assert all(x["approved_by"].startswith("--confirm (") for x in records)
    assert records[-1]["backup_id"] == backup_id
    r = run_dr("audit", "--backup-dir", backups)
    assert r.returncode == 0
    assert "restore" in r.stdout
    r = run_dr("audit", "--backup-dir", backups, "--since", "yesterday")
    assert r.returncode == 2
    assert "--since" in _error_line(r)


def test_require_immutable_and_versioned_buckets(
    tmp_path: Path, app_db: Path, moto_endpoint: str
) -> None:
    s3 = boto3.client("s3")
    plain, locked, models = (f"{n}-{os.getpid()}" for n in ("plain", "locked", "models"))
    s3.create_bucket(Bucket=plain)
    s3.create_bucket(Bucket=models)
    s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=locked,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 7}},
        },
    )
    url = f"sqlite:///{app_db}"
    for bucket in (plain, locked):
        dirs = ["--backup-dir", str(tmp_path / bucket), "--s3-bucket", bucket]
        r = run_dr("backup", "--database-url", url, *dirs, env={"DR_S3_SSE": "AES256"})
        assert r.returncode == 0, r.stderr
    key = next(o["Key"] for o in s3.list_objects_v2(Bucket=plain)["Contents"])
    assert s3.head_object(Bucket=plain, Key=key)["ServerSideEncryption"] == "AES256"

    verify = ["backup", "--verify-only", "--require-immutable"]
    r = run_dr(*verify, "--backup-dir", str(tmp_path / plain), "--s3-bucket", plain)
    assert r.returncode == 1
    assert "NOT_IMMUTABLE" in r.stdout
    assert "versioning off, no Object Lock" in r.stdout
    r = run_dr(*verify, "--backup-dir", str(tmp_path / locked), "--s3-bucket", locked, "--json")
    assert r.returncode == 0, r.stdout
    report = json.loads(r.stdout)
    assert [p["immutable"] for p in report["protection"]] == [False, True]  # local, S3

    check_models = ["backup", "--verify-only", "--backup-dir", str(tmp_path / locked)]
    r = run_dr(*check_models, "--versioned-bucket", models)
    assert r.returncode == 1
    assert "versioning must be enabled" in r.stdout
    s3.put_bucket_versioning(Bucket=models, VersioningConfiguration={"Status": "Enabled"})
    r = run_dr(*check_models, "--versioned-bucket", models)
    assert r.returncode == 0, r.stdout


def test_bad_sse_setting_is_one_clear_line(tmp_path: Path, app_db: Path) -> None:
    r = run_dr(
        "backup",
        "--database-url",
        f"sqlite:///{app_db}",
        "--backup-dir",
        str(tmp_path / "b"),
        "--s3-bucket",
        "b",
        env={"DR_S3_SSE": "kms"},
    )
    assert r.returncode == 2
    assert "unknown S3 server-side encryption" in _error_line(r)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
