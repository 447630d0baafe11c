"""Scenario 3 of the runbook: data loss (accidental deletion).

stop writers -> identify the last good state (newest backup before the deletion) -> approval ->
restore -> verify (counts + the caller's check queries) -> restart -> report
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from prefect import flow
from prefect.states import State
from pydantic import Field

from flows._scenario import BackupChoice, ScenarioRun
from flows.recovery import plan_only, recover_database, verify_service
from tasks.core.config import CriticalQuery


@flow(name="data-loss", log_prints=True)
def data_loss(
    deleted_at: Annotated[
        datetime,
        Field(
            description="When the data was deleted (UTC): the backup used "
            "is the newest one taken before this"
        ),
    ],
    config: str = "",
    database: str = "main",
    backup: BackupChoice = BackupChoice(),
    checks: Annotated[
        tuple[CriticalQuery, ...],
        Field(
            description="Queries that must hold after "
            "the restore, e.g. rows created before the deletion",
        ),
    ] = (),
    confirm: bool = False,
    dry_run: bool = False,
    keep_down_on_failure: bool = False,
    approval_timeout_s: int = 3600,
) -> State[Any]:
    """Bring back data deleted by mistake from the newest backup taken before the deletion."""
    run = ScenarioRun("data-loss", config, locals(), deleted_at)
    if dry_run:
        return plan_only(run, database, backup, before=deleted_at)
    with run.recovery_lock():
        run.notify("data-loss recovery started", f"database {database}, deleted at {deleted_at}")
        try:
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
            healthy_at = verify_service(run)
        except Exception as exc:
            return run.fail(exc, keep_down=keep_down_on_failure)
        return run.succeed(
            healthy_at,
            [
                f"database {database} restored to its state before {deleted_at:%Y-%m-%d %H:%M:%SZ}",
                "application running at its previous scale",
                "changes made after the backup and before the deletion "
                "must be re-applied from the previous database if needed",
            ],
        )
