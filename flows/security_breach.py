"""Scenario 4 of the runbook: security breach.

contain (scale to 0) -> rotate secrets (app Secret keys + database role password) -> newest backup
before the breach -> approval -> restore -> restart with a rolling restart (new secrets) ->
notify stakeholders -> report. New secret values never reach logs, artifacts or the report.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from prefect import flow
from prefect.states import State
from pydantic import Field

from flows._scenario import BackupChoice, ScenarioRun
from flows.recovery import plan_only, restore_from_backup, select, verify_service
from tasks import platform as platform_tasks
from tasks import secrets as secret_tasks


@flow(name="security-breach", log_prints=True)
def security_breach(
    breach_at: Annotated[
        datetime,
        Field(
            description="When the breach began (UTC): the backup used is "
            "the newest one taken before this"
        ),
    ],
    config: str = "",
    database: str = "main",
    backup: BackupChoice = BackupChoice(),
    confirm: bool = False,
    dry_run: bool = False,
    keep_down_on_failure: bool = False,
    approval_timeout_s: int = 3600,
) -> State[Any]:
    """Contain a breach, rotate every secret, restore clean data, restart on new secrets."""
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
    with run.recovery_lock():
        run.notify("security-breach response started", f"breach at {breach_at}")
        try:
            run.stop_workloads(workloads)
            if sec is None or sec.kubernetes_secret is None:
                run.skip(
                    "Rotate secrets",
                    "Stop further damage",
                    "not configured",
                    "no [secrets] in the config: rotate credentials by hand NOW",
                )
            else:
                with run.step("Rotate secrets", "Stop further damage") as s:
                    rotated = secret_tasks.rotate_secrets(run.cfg, database)
                    s.detail = (
                        f"new values for {', '.join(rotated.keys_rotated)} in Secret "
                        f"{rotated.secret}"
                        + (
                            f"; role {rotated.database_role} has a new password"
                            if rotated.database_role
                            else ""
                        )
                    )
            entry = select(run, database, backup, before=breach_at)
            restore_from_backup(
                run, database, entry, confirm=confirm, approval_timeout_s=approval_timeout_s
            )
            run.start_workloads()
            if workloads:
                with run.step("Rolling restart on the new secrets", "Deploy application") as s:
                    platform_tasks.rollout_restart(run.cfg, workloads)
                    target = {w.name: w.replicas for w in run.cfg.platform.workloads}
                    platform_tasks.wait_ready(run.cfg, target, run.cfg.platform.ready_timeout_s)
                    s.detail = "restarted: " + ", ".join(workloads)
            healthy_at = verify_service(run)
        except Exception as exc:
            return run.fail(exc, keep_down=keep_down_on_failure)
        run.notify(
            "security breach: services restored",
            f"Environment {run.cfg.environment} was restored from a backup taken before "
            f"{breach_at:%Y-%m-%d %H:%M:%SZ}; credentials were rotated.",
            audiences=("stakeholders", "management"),
        )
        return run.succeed(
            healthy_at,
            [
                "credentials rotated; the old ones no longer work",
                f"database {database} restored from before the breach",
                "still to do: patch the vulnerability, review access, "
                "notify users/regulators if required",
            ],
        )
