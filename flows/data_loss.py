"""Scenario 3 of the runbook: data loss (accidental deletion).

stop writers -> identify the last good state (newest backup before the deletion) -> approval ->
restore -> verify (counts + the caller's check queries) -> restart -> report
With pgBackRest configured ([pitr]) the last good state is the instant just before the deletion:
a point-in-time recovery of the server (flows/pitr_recovery.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._scenario import BackupChoice, BackupStrategy, ScenarioRun
from flows.pitr_recovery import plan_only_pitr, recover_point_in_time
from flows.recovery import as_utc, plan_only, recover_database, verify_service
from tasks.core.config import CriticalQuery
from tasks.core.pitr import Target


@flow(name="data-loss", log_prints=True)
def data_loss(
    deleted_at: datetime,
    config: str = "",
    database: str = "main",
    backup: BackupChoice = BackupChoice(),
    checks: tuple[CriticalQuery, ...] = (),
    confirm: bool = False,
    dry_run: bool = False,
    keep_down_on_failure: bool = False,
    approval_timeout_s: int = 3600,
) -> State[Any]:
    """Bring back data deleted by mistake from the newest backup taken before the deletion.

    Args:
        deleted_at: when the data was deleted (UTC); the newest backup before it is used
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
        database: which database of the config
        backup: override the choice: a given backup id, or the newest before another time
        checks: queries that must hold after the restore, e.g. rows created before the deletion
        confirm: approve up front (automation); otherwise the run pauses for approval
        dry_run: resolve and publish the plan; change nothing
        keep_down_on_failure: leave the application stopped if the recovery fails
        approval_timeout_s: how long to wait for approval before giving up (nothing restored)
    """
    deleted_at = as_utc(deleted_at, what="deleted_at")
    run = ScenarioRun("data-loss", config, locals(), deleted_at)
    # pgBackRest configured and no backup chosen by hand: recover to just before the deletion
    pitr = run.cfg.pitr is not None and backup.strategy is BackupStrategy.latest
    target = Target("time", time=deleted_at, exclusive=True)
    if dry_run:
        if pitr:
            return plan_only_pitr(run, target)
        return plan_only(run, database, backup, before=deleted_at)

    def steps() -> tuple[datetime, list[str]]:
        if pitr:
            recover_point_in_time(
                run,
                database,
                target,
                confirm=confirm,
                approval_timeout_s=approval_timeout_s,
                extra_checks=checks,
            )
            return verify_service(run), [
                f"database server recovered to just before {deleted_at:%Y-%m-%d %H:%M:%SZ} "
                "(point in time, pgBackRest)",
                "application running at its previous scale",
                "changes made after the deletion are not in the recovered server: re-apply "
                "them from the previous data directory if needed",
            ]
        recover_database(
            run,
            database,
            backup,
            confirm=confirm,
            approval_timeout_s=approval_timeout_s,
            amcheck=False,
            before=deleted_at,
            extra_checks=checks,
        )
        return verify_service(run), [
            f"database {database} restored to its state before {deleted_at:%Y-%m-%d %H:%M:%SZ}",
            "application running at its previous scale",
            "changes made after the backup and before the deletion must be re-applied from "
            "the previous database if needed",
        ]

    return run.execute(
        steps,
        keep_down=keep_down_on_failure,
        started=f"database {database}, deleted at {deleted_at}",
    )
