"""Runbook "Weekly Full Test" (and, against the staging config, the monthly staging restore):
restore the latest backup into a scratch target, run the smoke tests, measure the restore
duration against the RTO, tear the scratch target down even on failure, publish the evidence."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._ops import finish, record
from tasks import backup as backup_tasks
from tasks import database as db_tasks
from tasks.core.config import load_config
from tasks.core.dburl import redact
from tasks.core.restoretest import evidence_markdown


@flow(name="restore-test", log_prints=True)
def restore_test(config: str = "", database: str = "main") -> State[Any]:
    """Prove the latest backup restores, is consistent, and restores fast enough.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
        database: which database of the config
    """
    cfg = load_config(config or None)
    rto_s = cfg.objectives.rto_minutes * 60
    started = datetime.now(UTC)
    try:
        entry = db_tasks.select_backup(cfg, database)
        result = backup_tasks.restore_test(cfg, database, entry)
    except Exception as exc:
        detail = redact(str(exc)) or type(exc).__name__
        record(cfg, "restore-test", database, started, False, detail, rto_objective_s=rto_s)
        return finish(
            cfg, "restore-test", [{"database": database, "ok": False, "detail": detail}], [detail]
        )
    failures = [
        f"{c.name}: expected {c.expected}, got {c.actual}" for c in result.checks if not c.ok
    ]
    if result.duration_s > rto_s:
        failures.append(f"restore took {result.duration_s:.0f}s, over the RTO of {rto_s:.0f}s")
    if not result.torn_down:
        failures.append(f"scratch target {result.scratch} could not be removed")
    rpo_s = (started - entry.manifest.consistent_at).total_seconds()
    record(
        cfg,
        "restore-test",
        database,
        started,
        not failures,
        "; ".join(failures) or f"{len(result.checks)} checks passed",
        backup_id=result.backup_id,
        rto_s=result.duration_s,
        rto_objective_s=rto_s,
        rpo_s=rpo_s,
        rpo_objective_s=cfg.objectives.rpo_minutes * 60,
    )
    rows = [
        {"check": c.name, "expected": c.expected, "actual": c.actual, "ok": c.ok}
        for c in result.checks
    ]
    return finish(
        cfg,
        "restore-test",
        rows,
        failures,
        evidence_markdown(result, database, cfg.environment, rto_s),
    )
