"""Scenario 2 of the runbook: complete infrastructure loss.

assess (which backups are reachable, how old) -> provision (manifests, terraform) -> restore the
database into the new cluster (roles included) -> deploy the application -> update DNS ->
health-check every URL -> report
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._scenario import BackupChoice, ScenarioRun
from flows.recovery import plan_only, restore_from_backup, select, verify_service
from tasks import database as db_tasks
from tasks import infra
from tasks.core.errors import BackupNotFound
from tasks.core.units import age


@flow(name="infrastructure-loss", log_prints=True)
def infrastructure_loss(
    config: str = "",
    database: str = "main",
    backup: BackupChoice = BackupChoice(),
    incident_at: datetime | None = None,
    confirm: bool = False,
    dry_run: bool = False,
    approval_timeout_s: int = 3600,
) -> State[Any]:
    """Rebuild the environment from nothing but its backups and its configuration."""
    run = ScenarioRun("infrastructure-loss", config, locals(), incident_at)
    if dry_run:
        return plan_only(
            run,
            database,
            backup,
            extra=[
                f"provision: manifests {run.cfg.platform.manifests_dir or 'not configured'}, "
                f"terraform {run.cfg.platform.terraform_dir or 'not configured'}",
                f"dns: {len(run.cfg.dns.records) if run.cfg.dns else 0} record(s)",
            ],
        )
    cfg = run.cfg
    with run.recovery_lock():
        run.notify("infrastructure-loss recovery started", f"environment {cfg.environment}")
        try:
            with run.step("Assess backups", "Assess situation and scope") as s:
                backups = db_tasks.list_backups(cfg)
                if not backups:
                    raise BackupNotFound("no backup is reachable in any location")
                newest = backups[0]
                where = sorted({n for b in backups for n in b.location_names()})
                s.detail = (
                    f"{len(backups)} backups reachable in {', '.join(where)}; newest "
                    f"{newest.backup_id}, "
                    f"{age(_seconds_since(newest.manifest.consistent_at))} old"
                )
            if cfg.platform.manifests_dir is None:
                run.skip(
                    "Apply manifests",
                    "Provision infrastructure (if needed)",
                    "not configured",
                    "platform.manifests_dir is not set",
                )
            else:
                with run.step("Apply manifests", "Provision infrastructure (if needed)") as s:
                    applied = infra.apply_manifests(cfg)
                    s.detail = f"{len(applied)} objects: {', '.join(applied[:8])}"
            if cfg.platform.terraform_dir is None:
                run.skip(
                    "terraform apply",
                    "Provision infrastructure (if needed)",
                    "not configured",
                    "platform.terraform_dir is not set",
                )
            else:
                with run.step("terraform apply", "Provision infrastructure (if needed)") as s:
                    s.detail = infra.run_terraform(cfg)
            entry = select(run, database, backup)
            restore_from_backup(
                run, database, entry, confirm=confirm, approval_timeout_s=approval_timeout_s
            )
            run.start_workloads(
                {w.name: w.replicas for w in cfg.platform.workloads}, name="Deploy the application"
            )
            if cfg.dns is None:
                run.skip(
                    "Update DNS",
                    "Update DNS (if needed)",
                    "not configured",
                    "no [dns] in the config",
                )
            else:
                with run.step("Update DNS", "Update DNS (if needed)") as s:
                    change = infra.update_dns(cfg)
                    s.detail = f"{'; '.join(change.records)}: {change.status}"
            healthy_at = verify_service(run)
        except Exception as exc:
            return run.fail(exc, keep_down=True)
        return run.succeed(
            healthy_at,
            ["environment rebuilt and serving", "watch error rates while DNS caches expire"],
        )


def _seconds_since(t: datetime) -> float:
    return (datetime.now(UTC) - t).total_seconds()
