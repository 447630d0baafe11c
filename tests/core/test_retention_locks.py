"""Retention and S3 Object Lock, against moto's server over HTTP: a backup whose S3 objects are
locked (retention until a later date, or a legal hold) is never deleted there, not even its
manifest, and the plan says why; the other copies still follow the policy."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from tasks.core import retention
from tasks.core.catalog import Catalog
from tasks.core.retention import AgePolicy, candidates, plan
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.s3 import S3Storage
from tests.conftest import _names, run_dr
from tests.core.fake_backups import put_backup

DAY = timedelta(days=1)


@pytest.fixture
def locked_bucket(moto_endpoint: str) -> str:
    """A bucket with Object Lock enabled (and so versioning), no default retention."""
    name = f"dr-lock-{os.getpid()}-{next(_names)}"
    boto3.client("s3").create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def _lock(bucket: str, s3: S3Storage, backup_id: str, **how: object) -> None:
    """Lock every object of ``backup_id``: ``until=`` (COMPLIANCE retention) or ``hold=True``."""
    client = boto3.client("s3")
    for obj in s3.list(f"{backup_id}/"):
        key = s3.full_key(obj.key)
        if "until" in how:
            client.put_object_retention(
                Bucket=bucket,
                Key=key,
                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": how["until"]},
            )
        else:
            client.put_object_legal_hold(Bucket=bucket, Key=key, LegalHold={"Status": "ON"})


def _complete(s3: S3Storage, catalog: Catalog, backup_id: str) -> bool:
    """Listed in ``s3``, and its artefact there has the manifest's sha256."""
    entry = next((e for e in catalog.list().backups if e.backup_id == backup_id), None)
    if entry is None or s3 not in entry.locations:
        return False
    art = entry.manifest.artefacts[0]
    return hashlib.sha256(s3.read(art.key)).hexdigest() == art.sha256


def _delete_markers(bucket: str, prefix: str) -> list[str]:
    versions = boto3.client("s3").list_object_versions(Bucket=bucket, Prefix=prefix)
    return [m["Key"] for m in versions.get("DeleteMarkers", [])]


def test_locked_backups_are_kept_in_s3_and_the_plan_names_the_lock(
    tmp_path: Path, locked_bucket: str
) -> None:
    local, s3 = LocalStorage(tmp_path / "backups"), S3Storage(locked_bucket, "db")
    catalog = Catalog([local, s3])
    now = datetime.now(UTC)
    ids = {
        name: put_backup([local, s3], "app", now - age * DAY)
        for name, age in (("new", 1), ("compliance", 40), ("hold", 41), ("old", 42))
    }
    until = now + 33 * DAY
    _lock(locked_bucket, s3, ids["compliance"], until=until)
    _lock(locked_bucket, s3, ids["hold"], hold=True)
    listing = catalog.list()
    decisions = plan(candidates(listing.backups), AgePolicy(30 * DAY), now)

    shown = {
        (d.backup_id, d.location): d for d in retention.keep_locked(listing.backups, decisions, now)
    }
    lock = f"locked until {until:%Y-%m-%dT%H:%MZ} (Object Lock COMPLIANCE)"
    assert shown[(ids["compliance"], s3.url)].keep
    assert shown[(ids["compliance"], s3.url)].reason == (
        f"kept in {s3.url}: {lock} (the policy would delete it: older than 30 days)"
    )
    assert shown[(ids["compliance"], s3.url)].locked == lock
    assert shown[(ids["hold"], s3.url)].locked == "under legal hold (Object Lock)"
    # the local copies of the locked backups, and the unlocked backup, still follow the policy
    assert not shown[(ids["compliance"], local.url)].keep
    assert not shown[(ids["hold"], local.url)].keep
    assert not shown[(ids["old"], None)].keep

    # apply with the plain plan (as the nightly backup does): it checks the locks itself
    deleted = retention.apply(catalog, listing.backups, decisions, now=now)
    assert deleted == 4  # old everywhere, the locked backups from the local disk only
    held = {e.backup_id: e.location_names() for e in catalog.list().backups}
    assert held == {ids["new"]: ["local", "s3"], ids["compliance"]: ["s3"], ids["hold"]: ["s3"]}
    assert _complete(s3, catalog, ids["compliance"])
    assert _complete(s3, catalog, ids["hold"])
    # nothing was even attempted on the locked copies: no delete marker hides a locked version
    for name in ("compliance", "hold"):
        assert _delete_markers(locked_bucket, f"db/{ids[name]}/") == []
    assert _delete_markers(locked_bucket, f"db/{ids['old']}/")  # what retention did delete


def test_a_lock_that_has_expired_no_longer_keeps_the_backup(
    tmp_path: Path, locked_bucket: str
) -> None:
    s3 = S3Storage(locked_bucket, "db")
    catalog = Catalog([s3])
    now = datetime.now(UTC)
    put_backup([s3], "app", now - DAY)
    old = put_backup([s3], "app", now - 40 * DAY)
    _lock(locked_bucket, s3, old, until=now + DAY)
    later = now + 2 * DAY  # retention run after the lock's date
    listing = catalog.list()
    assert retention.object_lock(listing.backups[1], s3, now) is not None
    assert retention.object_lock(listing.backups[1], s3, later) is None
    decisions = plan(candidates(listing.backups), AgePolicy(30 * DAY), later)
    assert [d.keep for d in retention.keep_locked(listing.backups, decisions, later)] == [
        True,
        False,
    ]


def test_dr_retention_shows_and_keeps_locked_backups(tmp_path: Path, locked_bucket: str) -> None:
    config = tmp_path / "dr.toml"
    config.write_text(
        f'environment = "locks"\n[storage]\nbackup_dir = "{tmp_path / "backups"}"\n'
        f's3_bucket = "{locked_bucket}"\ns3_prefix = "db"\n'
        '[[databases]]\nname = "main"\nurl = "postgresql://app@127.0.0.1/app"\n'
        "[retention]\n"
    )
    s3 = S3Storage(locked_bucket, "db")
    now = datetime.now(UTC)
    # 400 days old: older than every window of the runbook's table, in both locations
    locked, unlocked = (put_backup([s3], "app", now - age * DAY) for age in (400, 401))
    newest = put_backup([s3], "app", now - DAY)
    until = now + 1000 * DAY
    _lock(locked_bucket, s3, locked, until=until)
    env = {"DR_CONFIG": str(config), "COLUMNS": "300"}

    dry = run_dr("retention", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    by_id = {d["backup_id"]: d for d in json.loads(dry.stdout)["decisions"]}
    lock = f"locked until {until:%Y-%m-%dT%H:%MZ} (Object Lock COMPLIANCE)"
    assert by_id[locked]["keep"] is True
    assert by_id[locked]["locked"] == lock
    assert by_id[unlocked]["keep"] is False
    assert by_id[unlocked]["locked"] is None

    applied = run_dr("retention", "--apply", env=env)
    assert applied.returncode == 0, applied.stderr
    assert f"kept in {s3.url}: {lock}" in applied.stdout
    assert f"{s3.url}: keep 2, deleted 1 (1 kept by S3 Object Lock)" in applied.stdout
    left = {e.backup_id for e in Catalog([s3]).list().backups}
    assert left == {locked, newest}
    assert _complete(s3, Catalog([s3]), locked)
