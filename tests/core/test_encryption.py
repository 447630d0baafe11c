"""Client-side encryption end to end, with real PostgreSQL, SQLite and S3 (moto over HTTP):
nothing readable leaves the machine, the manifest names the key, and a restore with a wrong or
missing key fails before anything changes."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from tasks.core.backup import backup_database
from tasks.core.catalog import Catalog
from tasks.core.crypto import EncryptionKey
from tasks.core.dburl import parse_database_url
from tasks.core.errors import ConfigError
from tasks.core.pgcluster import PgCluster
from tasks.core.restore import plan_restore, restore
from tasks.core.sampledata import create_sqlite_app_db
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.s3 import S3Storage
from tasks.core.verify import Status, verify_catalog
from tests.conftest import psql

KEY = EncryptionKey(os.urandom(32), "$DR_ENCRYPTION_KEY")
MARKER = "plaintext-marker-7f3a"


def test_encrypted_postgres_backup_round_trip(
    pg: PgCluster, dbname: str, tmp_path: Path, bucket: str
) -> None:
    url = pg.url_for(dbname)
    psql(
        url,
        "CREATE TABLE notes (id int PRIMARY KEY, body text);"
        f"INSERT INTO notes SELECT g, '{MARKER}' || g FROM generate_series(1, 2000) g;",
    )
    locations = [LocalStorage(tmp_path / "b"), S3Storage(bucket, "enc")]
    result = backup_database(parse_database_url(url), Catalog(locations, KEY))
    art = result.manifest.artefacts[0]
    assert art.encryption is not None
    assert art.encryption.key_id == KEY.key_id
    stored = (tmp_path / "b" / art.key).read_bytes()
    in_s3 = boto3.client("s3").get_object(Bucket=bucket, Key=f"enc/{art.key}")["Body"].read()
    assert stored == in_s3
    assert stored.startswith(b"DRENC1")
    assert MARKER.encode() not in stored

    # without the key: stored bytes are checked, contents are said not to be
    report = verify_catalog(Catalog(locations), now=result.manifest.finished_at)
    assert report.ok
    assert all("contents not checked" in r.detail for r in report.results)
    report = verify_catalog(Catalog(locations, KEY), now=result.manifest.finished_at)
    assert report.ok
    assert all("archive entries" in r.detail for r in report.results)

    psql(url, "DELETE FROM notes WHERE id > 10")
    entry = Catalog(locations).get(result.manifest.backup_id)
    plan = plan_restore(parse_database_url(url), entry, drop_existing=False)
    for wrong in (None, EncryptionKey(os.urandom(32), "$OTHER")):
        with pytest.raises(ConfigError, match=KEY.key_id):
            restore(plan, confirm=True, encryption=wrong)
        assert psql(url, "SELECT count(*) FROM notes") == "10"  # nothing changed
    done = restore(plan, confirm=True, encryption=KEY)
    assert all(c.ok for c in done.counts)
    assert psql(url, "SELECT count(*) FROM notes") == "2000"


def test_encrypted_sqlite_backup_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    counts = create_sqlite_app_db(db, users=50)
    url = parse_database_url(f"sqlite:///{db}")
    catalog = Catalog([LocalStorage(tmp_path / "b")], KEY)
    result = backup_database(url, catalog)
    stored = (tmp_path / "b" / result.manifest.artefacts[0].key).read_bytes()
    assert b"SQLite format 3" not in stored
    db.unlink()
    entry = catalog.get(result.manifest.backup_id)
    done = restore(plan_restore(url, entry, drop_existing=False), confirm=True, encryption=KEY)
    assert {c.table: c.actual for c in done.counts} == counts


def test_a_flipped_byte_in_an_encrypted_artefact_is_caught(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_sqlite_app_db(db, users=20)
    catalog = Catalog([LocalStorage(tmp_path / "b")], KEY)
    result = backup_database(parse_database_url(f"sqlite:///{db}"), catalog)
    path = tmp_path / "b" / result.manifest.artefacts[0].key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_catalog(catalog, now=result.manifest.finished_at)
    assert [r.status for r in report.results] == [Status.CHECKSUM_MISMATCH]
