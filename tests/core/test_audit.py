"""The audit trail: destructive actions leave one append-only record per location, saying who
approved what, and never a password."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.core import audit
from tasks.core.audit import AuditRecord, read_audit
from tasks.core.backup import backup_database
from tasks.core.catalog import Catalog
from tasks.core.crypto import EncryptionKey
from tasks.core.dburl import parse_database_url
from tasks.core.errors import ConfigError
from tasks.core.pgcluster import PgCluster
from tasks.core.restore import plan_restore, restore
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.memory import MemoryStorage
from tasks.core.storage.s3 import S3Storage
from tests.conftest import psql


def test_records_are_append_only_objects_read_back_in_order() -> None:
    loc = MemoryStorage()
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    for i, action in enumerate(["scale", "restore", "rotate-secret"]):
        audit.record([loc], AuditRecord(t0 + timedelta(minutes=i), action, "app", "ok", "x"))
    keys = [o.key for o in loc.list("_audit/")]
    assert len(keys) == 3
    assert all(k.startswith("_audit/2026-11/") for k in keys)
    records, unreadable = read_audit([loc])
    assert [r.action for r in records] == ["scale", "restore", "rotate-secret"]
    assert unreadable == 0
    assert all(r.actor for r in records)  # filled in with user@host
    later, _ = read_audit([loc], since=t0 + timedelta(minutes=1))
    assert [r.action for r in later] == ["restore", "rotate-secret"]
    loc.put("_audit/2026-11/broken.json", b"{not json")
    assert read_audit([loc])[1] == 1


def test_restores_are_audited_in_every_location_with_the_outcome(
    pg: PgCluster, dbname: str, tmp_path: Path, bucket: str
) -> None:
    psql(pg.url_for(dbname), "CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2);")
    psql(pg.url, "ALTER ROLE postgres PASSWORD 'audit-secret-pw'")
    url = parse_database_url(pg.url_for(dbname).replace("postgres@", "postgres:audit-secret-pw@"))
    locations = [LocalStorage(tmp_path / "b"), S3Storage(bucket, "a")]
    key = EncryptionKey(os.urandom(32))
    result = backup_database(url, Catalog(locations, key))
    entry = Catalog(locations).get(result.manifest.backup_id)
    plan = plan_restore(url, entry, drop_existing=True)

    with pytest.raises(ConfigError):
        restore(plan, confirm=True, approved_by="--confirm (test)")  # no key: refused
    restore(plan, confirm=True, encryption=key, approved_by="UI approval by alice")

    for loc in locations:
        records, _ = read_audit([loc])
        assert [(r.action, r.ok) for r in records] == [
            ("restore", False),
            ("restore", True),
            ("drop-database", True),
        ]
        failed, done, dropped = records
        assert failed.outcome.startswith("failed: ")
        assert "is encrypted" in failed.outcome
        assert failed.approved_by == "--confirm (test)"
        assert done.approved_by == "UI approval by alice"
        assert done.backup_id == result.manifest.backup_id
        assert dbname in done.target
        assert "previous database" in dropped.detail
    raw = b"".join(p.read_bytes() for p in (tmp_path / "b" / "_audit").rglob("*.json"))
    assert b"audit-secret-pw" not in raw
    psql(pg.url, "ALTER ROLE postgres PASSWORD NULL")
