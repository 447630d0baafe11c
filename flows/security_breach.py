"""Scenario 4 of the runbook: security breach.

contain (scale to 0) -> rotate secrets (app Secret keys + database role password) -> newest backup
before the breach -> approval -> restore -> restart with a rolling restart (new secrets) ->
notify stakeholders -> report. New secret values never reach logs, artifacts or the report.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._scenario import BackupChoice, ScenarioRun
from flows.recovery import as_utc, plan_only, restore_from_backup, select, verify_service
from tasks import platform as platform_tasks
from tasks import secrets as secret_tasks


@flow(name="security-breach", log_prints=True)
def security_breach(
    breach_at: datetime,
    config: str = "",
    database: str = "main",
    backup: BackupChoice = BackupChoice(),
    confirm: bool = False,
    dry_run: bool = False,
    keep_down_on_failure: bool = True,
    approval_timeout_s: int = 3600,
) -> State[Any]:
    """Contain a breach, rotate every secret, restore clean data, restart on new secrets.

    Args:
        breach_at: when the breach began (UTC); the newest backup before it is used
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
        database: which database of the config
        backup: override the choice: a given backup id, or the newest before another time
        confirm: approve up front (automation); otherwise the run pauses for approval
        dry_run: resolve and publish the plan; change nothing
        keep_down_on_failure: leave the application stopped (contained) if the recovery
            fails or is rejected; on by default: a breached application stays contained
        approval_timeout_s: how long to wait for approval before giving up (nothing restored)
    """
    breach_at = as_utc(breach_at, what="breach_at")
    run = ScenarioRun("security-breach", config, locals(), breach_at)
    sec = run.cfg.secrets
    if dry_run:
        rotate = (
            f"rotate: {', '.join(sec.rotate_keys) or '-'} in Secret "
            f"{sec.kubernetes_secret}; role {sec.database_role or '-'} password"
            if sec
            else "rotate: nothing configured ([secrets] missing)"
        )
        return plan_only(run, database, backup, before=breach_at, extra=[rotate])
    workloads = [w.name for w in run.cfg.platform.workloads]

    def rotate() -> str:
        rotated = secret_tasks.rotate_secrets(run.cfg, database)
        role = f"; role {rotated.database_role} has a new password" if rotated.database_role else ""
        return f"new values for {', '.join(rotated.keys_rotated)} in Secret {rotated.secret}{role}"

    rotation_configured = bool(sec and sec.kubernetes_secret)

    def steps() -> tuple[datetime, list[str]]:
        run.stop_workloads(workloads)
        run.optional(
            "Rotate secrets",
            "Stop further damage",
            None
            if rotation_configured
            else "no [secrets] in the config: rotate credentials by hand NOW",
            rotate,
        )
        previous = dict(run.scale_state.replicas) if run.scale_state else {}
        entry = select(run, database, backup, before=breach_at)
        restore_from_backup(
            run,
            database,
            entry,
            confirm=confirm,
            approval_timeout_s=approval_timeout_s,
            assessment=[
                "the application is contained (stopped) and "
                + (
                    "its credentials are rotated"
                    if rotation_configured
                    else "its credentials are NOT rotated (not configured)"
                )
            ],
            on_reject=(
                "the application stays stopped (keep_down_on_failure)"
                if keep_down_on_failure
                else "the application is started again"
            ),
        )
        run.start_workloads()
        if previous:
            with run.step("Rolling restart on the new secrets", "Deploy application") as s:
                platform_tasks.rollout_restart(run.cfg, list(previous))
                platform_tasks.wait_ready(run.cfg, previous, run.cfg.platform.ready_timeout_s)
                s.detail = "restarted: " + ", ".join(previous)
        healthy_at = verify_service(run)
        credentials = (
            "credentials were rotated"
            if rotation_configured
            else "credentials were NOT rotated by dr (not configured)"
        )
        run.notify(
            "security breach: services restored",
            f"Environment {run.cfg.environment} was restored from a backup taken before "
            f"{breach_at:%Y-%m-%d %H:%M:%SZ}; {credentials}.",
            audiences=("stakeholders", "management"),
        )
        return healthy_at, [
            "credentials rotated; the old ones no longer work"
            if rotation_configured
            else "credentials NOT rotated: rotate them by hand",
            f"database {database} restored from before the breach",
            "still to do: patch the vulnerability, review access, notify "
            "users/regulators if required",
        ]

    return run.execute(steps, keep_down=keep_down_on_failure, started=f"breach at {breach_at}")
