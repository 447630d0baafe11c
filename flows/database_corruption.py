"""Scenario 1 of the runbook: database corruption.

stop the application -> confirm the corruption -> select a backup -> approval -> safe restore
(side database, verify, switch) -> verify data -> restart the application -> health -> report
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._scenario import BackupChoice, ScenarioRun
from flows.recovery import plan_only, recover_database, verify_service


@flow(name="database-corruption", log_prints=True)
def database_corruption(
    config: str = "",
    database: str = "main",
    backup: BackupChoice = BackupChoice(),
    incident_at: datetime | None = None,
    confirm: bool = False,
    dry_run: bool = False,
    keep_down_on_failure: bool = False,
    approval_timeout_s: int = 3600,
) -> State[Any]:
    """Restore a corrupted database from a verified backup and bring the application back."""
    run = ScenarioRun("database-corruption", config, locals(), incident_at)
    if dry_run:
        return plan_only(run, database, backup)
    with run.recovery_lock():
        run.notify("database-corruption started", f"database {database}")
        try:
            recover_database(
                run,
                database,
                backup,
                confirm=confirm,
                approval_timeout_s=approval_timeout_s,
                amcheck=True,
            )
            healthy_at = verify_service(run)
        except Exception as exc:  # the failure path restores the scale and reports
            return run.fail(exc, keep_down=keep_down_on_failure)
        return run.succeed(
            healthy_at,
            [f"database {database} restored and live", "application running at its previous scale"],
        )
