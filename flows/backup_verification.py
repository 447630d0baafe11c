"""Runbook "Daily Verification": the latest backup of every database, in every location, is read
back in full: manifest intact, sizes and sha256 match, the archive itself readable."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._ops import finish, record
from tasks import backup as backup_tasks
from tasks.core.config import load_config


@flow(name="backup-verification", log_prints=True)
def backup_verification(config: str = "") -> State[Any]:
    """Verify the latest backup of every database in every location.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
    """
    cfg = load_config(config or None)
    started = datetime.now(UTC)
    report = backup_tasks.verify_backups(cfg, latest=True)
    rows = [
        {
            "backup": r.backup_id,
            "location": r.location,
            "status": r.status.value,
            "detail": r.detail,
        }
        for r in report.results
    ]
    failures = [
        f"{r.backup_id} in {r.location}: {r.status.value}"
        for r in report.results
        if r.status.value != "OK"
    ]
    if not report.results:
        failures.append("no backup to verify")
    record(
        cfg,
        "verification",
        cfg.environment,
        started,
        not failures,
        "; ".join(failures) or f"{len(rows)} copies verified",
    )
    return finish(cfg, "backup-verification", rows, failures)
