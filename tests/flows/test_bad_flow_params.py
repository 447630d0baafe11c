"""Bad flow parameters, as the on-call engineer could type them in the Prefect UI's run form:
the run fails with one clear line, and nothing changed (no scale, no restore, no audit record,
the database and the backups as they were)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flows._scenario import BackupChoice, BackupStrategy
from flows.backup_monitor import backup_monitor
from flows.data_loss import data_loss
from flows.database_corruption import database_corruption
from flows.nightly_backup import nightly_backup
from flows.restore_test import restore_test
from flows.security_breach import security_breach
from tasks.core.audit import read_audit
from tasks.core.config import load_config
from tasks.core.environment import build_catalog
from tests.flows.conftest import AppEnv

pytestmark = pytest.mark.timeout(300)

FUTURE = datetime.now(UTC) + timedelta(days=3650)

CASES: list[tuple[str, Callable[..., Any], dict[str, Any], str]] = [
    ("missing-config", database_corruption, {"config": "/no/such/dr.toml"}, "does not exist"),
    ("unknown-database", database_corruption, {"database": "nosuch"}, "nosuch"),
    (
        "unknown-backup-id",
        database_corruption,
        {"backup": BackupChoice(strategy=BackupStrategy.backup_id, backup_id="nosuch")},
        "no backup with id 'nosuch'",
    ),
    (
        "before-first-backup",
        database_corruption,
        {
            "backup": BackupChoice(
                strategy=BackupStrategy.before, before=datetime(2000, 1, 1, tzinfo=UTC)
            )
        },
        "no good backup",
    ),
    ("deletion-in-future", data_loss, {"deleted_at": FUTURE}, "in the future"),
    ("breach-in-future", security_breach, {"breach_at": FUTURE}, "in the future"),
    ("restore-test-unknown-db", restore_test, {"database": "nosuch"}, "nosuch"),
    ("nightly-missing-config", nightly_backup, {"config": "/no/such/dr.toml"}, "does not exist"),
    ("monitor-missing-config", backup_monitor, {"config": "/no/such/dr.toml"}, "does not exist"),
]


@pytest.mark.parametrize(
    ("flow", "params", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_flow_parameters_fail_in_one_line_and_change_nothing(
    app_env: AppEnv, flow: Callable[..., Any], params: dict[str, Any], message: str
) -> None:
    app_env.backup()
    before_rows = app_env.sql("SELECT count(*) FROM trades")
    catalog = build_catalog(load_config(app_env.config))
    backups = [b.backup_id for b in catalog.list().backups]
    params = {"config": str(app_env.config), "confirm": True, **params}
    if flow in (nightly_backup, restore_test, backup_monitor):
        params.pop("confirm")
    state = flow(**params, return_state=True)
    assert state.is_failed(), state
    text = state.message or ""
    assert message in text, text
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    assert app_env.replicas() == 3
    assert app_env.sql("SELECT count(*) FROM trades") == before_rows
    assert [b.backup_id for b in catalog.list().backups] == backups
    assert read_audit(catalog.locations)[0] == []
