"""Scenario 1 of the runbook: database corruption.

stop the application -> confirm the corruption -> select a backup -> approval -> safe restore
(side database, verify, switch) -> verify data -> restart the application -> health -> report
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._scenario import BackupChoice, BackupStrategy, ScenarioRun
from flows.pitr_recovery import plan_only_pitr, recover_point_in_time
from flows.recovery import (
    as_utc,
    assess_corruption,
    plan_only,
    recover_database,
    verify_service,
)
from tasks.core.pitr import Target


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
    amcheck: bool = True,
) -> State[Any]:
    """Restore a corrupted database from a verified backup and bring the application back.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
        database: which database of the config
        backup: which backup: the latest good one, a given id, or the newest before a time
        incident_at: when the corruption happened (UTC), for the RPO; default: now
        confirm: approve up front (automation); otherwise the run pauses for approval
        dry_run: resolve and publish the plan; change nothing
        keep_down_on_failure: leave the application stopped if the recovery fails
        approval_timeout_s: how long to wait for approval before giving up (nothing restored)
        amcheck: run pg_amcheck to confirm the corruption (it reads every page: slow on big
            databases)
    """
    incident_at = as_utc(incident_at, what="incident_at")
    run = ScenarioRun("database-corruption", config, locals(), incident_at)
    # pgBackRest configured and no backup chosen by hand: the fast physical path to the latest
    pitr = run.cfg.pitr is not None and backup.strategy is BackupStrategy.latest
    if dry_run:
        if pitr:
            return plan_only_pitr(run, Target("latest"))
        return plan_only(run, database, backup)

    def steps() -> tuple[datetime, list[str]]:
        if pitr:
            recover_point_in_time(
                run,
                database,
                Target("latest"),
                confirm=confirm,
                approval_timeout_s=approval_timeout_s,
                assessment=assess_corruption(run, database) if amcheck else (),
            )
            return verify_service(run), [
                f"database server of {database} restored (pgBackRest, latest archived state) "
                "and live",
                "application running at its previous scale",
            ]
        recover_database(
            run,
            database,
            backup,
            confirm=confirm,
            approval_timeout_s=approval_timeout_s,
            amcheck=amcheck,
        )
        return verify_service(run), [
            f"database {database} restored and live",
            "application running at its previous scale",
        ]

    return run.execute(steps, keep_down=keep_down_on_failure, started=f"database {database}")
