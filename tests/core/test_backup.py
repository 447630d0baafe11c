"""Backups across locations with real PostgreSQL and S3 (moto over HTTP): commit protocol,
fallback between copies, crashes half-way, retention."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from tasks.core.backup import backup_database
from tasks.core.catalog import Catalog
from tasks.core.dburl import parse_database_url
from tasks.core.errors import IntegrityError
from tasks.core.pgcluster import PgCluster
from tasks.core.restore import plan_restore, restore
from tasks.core.sampledata import create_sqlite_app_db
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.s3 import S3Storage
from tests.conftest import DR, psql, run_dr
from tests.core.fake_backups import put_backup


def _seed(url: str, rows: int = 1000) -> None:
    psql(
        url,
        f"CREATE TABLE users (id int PRIMARY KEY, email text);"
        f"INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, {rows}) g;",
    )


def _catalog(tmp_path: Path, bucket: str) -> Catalog:
    return Catalog([LocalStorage(tmp_path / "backups"), S3Storage(bucket)])


def test_backup_lands_in_both_locations_identically(
    pg: PgCluster, dbname: str, tmp_path: Path, bucket: str
) -> None:
    _seed(pg.url_for(dbname))
    catalog = _catalog(tmp_path, bucket)
    result = backup_database(parse_database_url(pg.url_for(dbname)), catalog)
    assert result.complete
    assert len(result.committed) == 2
    bid = result.manifest.backup_id
    local, s3 = catalog.locations
    assert local.read(f"{bid}/manifest.json") == s3.read(f"{bid}/manifest.json")
    art = result.manifest.artefacts[0]
    assert local.read(art.key) == s3.read(art.key)
    assert result.manifest.counts == {"public.users": 1000}
    entry = catalog.list().backups[0]
    assert entry.backup_id == bid
    assert entry.location_names() == ["local", "s3"]


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_restore_falls_back_to_s3_when_local_copy_is_bad(
    pg: PgCluster, dbname: str, tmp_path: Path, bucket: str, damage: str
) -> None:
    _seed(pg.url_for(dbname))
    catalog = _catalog(tmp_path, bucket)
    m = backup_database(parse_database_url(pg.url_for(dbname)), catalog).manifest
    local_art = tmp_path / "backups" / m.artefacts[0].key
    if damage == "delete":
        local_art.unlink()
    else:
        data = bytearray(local_art.read_bytes())
        data[len(data) // 3] ^= 0x10
        local_art.write_bytes(bytes(data))
    psql(pg.url_for(dbname), "DELETE FROM users WHERE id > 10")

    target = parse_database_url(pg.url_for(dbname))
    result = restore(
        plan_restore(target, catalog.get(m.backup_id), drop_existing=True), confirm=True
    )
    assert result.source == f"s3://{bucket}/database-backups"
    why = result.skipped_locations[str(tmp_path / "backups")]
    assert ("missing" if damage == "delete" else "sha256 mismatch") in why
    assert psql(pg.url_for(dbname), "SELECT count(*) FROM users") == "1000"


def test_no_intact_copy_means_nothing_restored(
    pg: PgCluster, dbname: str, tmp_path: Path, bucket: str
) -> None:
    _seed(pg.url_for(dbname))
    catalog = _catalog(tmp_path, bucket)
    m = backup_database(parse_database_url(pg.url_for(dbname)), catalog).manifest
    key = m.artefacts[0].key
    (tmp_path / "backups" / key).unlink()
    s3 = boto3.client("s3")
    body = bytearray(s3.get_object(Bucket=bucket, Key=f"database-backups/{key}")["Body"].read())
    s3.put_object(Bucket=bucket, Key=f"database-backups/{key}", Body=bytes(body[:-100]))
    psql(pg.url_for(dbname), "DELETE FROM users WHERE id > 10")

    plan = plan_restore(
        parse_database_url(pg.url_for(dbname)), catalog.get(m.backup_id), drop_existing=True
    )
    with pytest.raises(IntegrityError, match="no intact copy"):
        restore(plan, confirm=True)
    assert psql(pg.url_for(dbname), "SELECT count(*) FROM users") == "10"
    assert psql(pg.url, f"SELECT count(*) FROM pg_database WHERE datname LIKE '{dbname}_%'") == "0"


def test_missing_bucket_is_a_config_error_before_anything_is_written(
    pg: PgCluster, dbname: str, tmp_path: Path, moto_endpoint: str
) -> None:
    """A bucket that does not exist is the user's to fix: refused up front (exit 2), nothing
    written anywhere. (An S3 that is *down* still leaves a local-only backup: tests/faults.)"""
    _seed(pg.url_for(dbname))
    r = run_dr(
        "backup",
        "--database-url",
        pg.url_for(dbname),
        "--backup-dir",
        str(tmp_path / "backups"),
        "--s3-bucket",
        "no-such-bucket",
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "dr: error: S3 bucket 'no-such-bucket' does not exist: create it or fix --s3-bucket"
    )
    assert not any((tmp_path / "backups").rglob("*.*"))


def test_backup_killed_half_way_is_invisible_then_swept(
    pg: PgCluster, dbname: str, tmp_path: Path, bucket: str
) -> None:
    url = pg.url_for(dbname)
    psql(
        url,
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g*7)::text) AS pad "
        "FROM generate_series(1, 1500000) g",
    )
    backups = tmp_path / "backups"
    proc = subprocess.Popen(
        [DR, "backup", "--database-url", url, "--backup-dir", str(backups), "--s3-bucket", bucket],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the artefact is being written
        partial = [p for p in backups.rglob(".tmp-*") if p.stat().st_size > 2_000_000]
        if partial:
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("the backup never started writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    catalog = _catalog(tmp_path, bucket)
    assert catalog.list().backups == []
    assert run_dr(
        "restore", "--list", "--backup-dir", str(backups), "--s3-bucket", bucket
    ).stdout.startswith("no backups in")
    assert catalog.sweep(datetime.now(UTC)) == []  # too recent: could still be running
    removed = catalog.sweep(datetime.now(UTC) + timedelta(hours=7))
    assert removed == [f"{backups}/{partial[0].parent.name}"]
    assert not any(backups.iterdir())
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == []

    result = backup_database(parse_database_url(url), catalog)
    assert result.complete
    assert catalog.list().backups[0].backup_id == result.manifest.backup_id


def test_retention_days_deletes_old_backups_everywhere_manifest_first(
    tmp_path: Path, bucket: str
) -> None:
    db = tmp_path / "app.db"
    create_sqlite_app_db(db, users=5)
    url = parse_database_url(f"sqlite:///{db}")
    catalog = _catalog(tmp_path, bucket)
    start = datetime(2026, 10, 1, 2, 0, tzinfo=UTC)
    ids = []
    for day in range(0, 40, 5):  # one backup every 5 days, 2026-10-01 .. 2026-11-05
        t = start + timedelta(days=day)
        ids.append(backup_database(url, catalog, now=lambda t=t: t).manifest.backup_id)
    # as old, but not this database's: another database's backup and a Redis snapshot
    others = {
        put_backup(catalog.locations, "billing", start),
        put_backup(catalog.locations, "app.db", start, engine="redis"),
    }
    now = start + timedelta(days=40)
    result = backup_database(url, catalog, retention_days=30, now=lambda: now)
    deleted = {d.backup_id for d in result.retention if not d.keep}
    assert deleted == set(ids[:2])  # 40 and 35 days old; 30 days old is kept
    remaining = {e.backup_id for e in catalog.list().backups}
    assert remaining == set(ids[2:]) | {result.manifest.backup_id} | others
    for loc in catalog.locations:
        assert not [o for o in loc.list() if o.key.split("/")[0] in deleted]
