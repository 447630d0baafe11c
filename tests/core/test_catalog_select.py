"""Which backup a restore picks when the catalog holds several databases and engines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.core.catalog import Catalog
from tasks.core.errors import BackupNotFound
from tasks.core.storage.memory import MemoryStorage
from tests.core.fake_backups import put_backup

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_redis_backups_next_to_one_database_do_not_hide_it() -> None:
    """Restoring the only PostgreSQL database into a new name still works when the nightly
    run also stores Redis snapshots in the same catalog (newer than the database's backup)."""
    loc = MemoryStorage()
    app = put_backup([loc], "app", T0)
    put_backup([loc], "redis-cache", T0 + timedelta(hours=1), engine="redis")
    catalog = Catalog([loc])
    assert catalog.select_for("app_copy", "postgresql").backup_id == app
    assert catalog.select_for("app", "postgresql").backup_id == app
    with pytest.raises(BackupNotFound, match="no good backup"):
        catalog.select_for("app", "sqlite")


def test_several_databases_of_the_engine_need_a_source() -> None:
    loc = MemoryStorage()
    put_backup([loc], "app", T0)
    put_backup([loc], "billing", T0)
    catalog = Catalog([loc])
    with pytest.raises(BackupNotFound, match=r"backups of app, billing: name one with --source"):
        catalog.select_for("app_copy", "postgresql")
    assert catalog.select_for("app_copy", "postgresql", source="billing").manifest.database == (
        "billing"
    )
