"""Scenario 2 of the runbook: complete infrastructure loss.

assess (which backups are reachable, how old) -> provision (manifests, terraform) -> restore the
database into the new cluster (roles included) -> restore Redis (when configured) -> deploy the
application -> update DNS -> health-check every URL -> report
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow
from prefect.states import State

from flows._scenario import BackupChoice, ScenarioRun
from flows.recovery import as_utc, plan_only, restore_from_backup, select, verify_service
from tasks import database as db_tasks
from tasks import infra
from tasks import redis as redis_tasks
from tasks.core.errors import BackupNotFound
from tasks.core.units import old


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
    """Rebuild the environment from nothing but its backups and its configuration.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
        database: which database of the config
        backup: which backup: the latest good one, a given id, or the newest before a time
        incident_at: when the infrastructure was lost (UTC), for the RPO; default: now
        confirm: approve up front (automation); otherwise the run pauses for approval
        dry_run: resolve and publish the plan; change nothing
        approval_timeout_s: how long to wait for approval before giving up (nothing restored)
    """
    incident_at = as_utc(incident_at, what="incident_at")
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
                f"redis: restore the newest snapshot of {run.cfg.redis.name!r}"
                if run.cfg.redis
                else "redis: not configured",
            ],
            stops_workloads=False,
        )
    cfg = run.cfg

    def assess() -> str:
        backups = db_tasks.list_backups(cfg)
        if not backups:
            raise BackupNotFound("no backup is reachable in any location")
        newest = backups[0]
        where = sorted({n for b in backups for n in b.location_names()})
        return (
            f"{len(backups)} backups reachable in {', '.join(where)}; newest "
            f"{newest.backup_id}, {old(_seconds_since(newest.manifest.consistent_at))}"
        )

    def apply_manifests() -> str:
        applied = infra.apply_manifests(cfg)
        return f"{len(applied)} objects: {', '.join(applied[:8])}"

    def update_dns() -> str:
        change = infra.update_dns(cfg)
        return f"{'; '.join(change.records)}: {change.status}"

    def restore_redis() -> str:
        assert cfg.redis is not None
        snapshots = [
            b
            for b in db_tasks.list_backups(cfg, cfg.redis.name)
            if b.manifest.engine == "redis" and b.good
        ]
        if not snapshots:
            raise BackupNotFound(f"no good Redis backup named {cfg.redis.name!r}")
        done = redis_tasks.restore_redis(cfg, snapshots[0], _redis_mode(cfg))
        keys = ", ".join(f"{d}={a}" for d, _, a in done.counts) or "no keys"
        aof = ", AOF rewritten" if done.aof_rewritten else ""
        return f"{snapshots[0].backup_id} ({done.plan.mode} mode): {keys}{aof}"

    def approval_plan(entry: Any) -> list[str]:
        p = cfg.platform
        return [
            f"terraform apply in {p.terraform_dir}"
            if p.terraform_dir
            else "terraform: not configured",
            f"apply the manifests in {p.manifests_dir}"
            if p.manifests_dir
            else "manifests: not configured",
            f"restore {entry.backup_id} into {cfg.database(database).resolve_url()} "
            "(roles recreated without passwords)",
            "start " + (", ".join(f"{w.name}={w.replicas}" for w in p.workloads) or "nothing"),
            f"point {len(cfg.dns.records)} DNS record(s) at the new infrastructure"
            if cfg.dns
            else "DNS: not configured",
            f"restore the newest Redis snapshot of {cfg.redis.name!r} ({_redis_mode(cfg)} mode)"
            if cfg.redis
            else "Redis: not configured",
        ]

    def steps() -> tuple[datetime, list[str]]:
        run.optional("Assess backups", "Assess situation and scope", None, assess)
        entry = select(run, database, backup)
        with run.step("Approval") as s:  # before anything is created or changed
            s.detail = "approved by " + run.approve(
                approval_plan(entry),
                confirm=confirm,
                timeout_s=approval_timeout_s,
                on_reject="nothing was provisioned or restored",
            )
        # terraform first: it usually creates the cluster the manifests go into
        run.optional(
            "terraform apply",
            "Provision infrastructure (if needed)",
            None if cfg.platform.terraform_dir else "platform.terraform_dir is not set",
            lambda: infra.run_terraform(cfg),
        )
        run.optional(
            "Apply manifests",
            "Provision infrastructure (if needed)",
            None if cfg.platform.manifests_dir else "platform.manifests_dir is not set",
            apply_manifests,
        )
        restore_from_backup(
            run,
            database,
            entry,
            confirm=True,
            approval_timeout_s=approval_timeout_s,
            approval=False,
        )
        # after the database: Redis holds caches and queues derived from it
        run.optional(
            "Restore Redis",
            "Restore Redis cache",
            None if cfg.redis else "no [redis] in the config",
            restore_redis,
        )
        run.start_workloads(
            {w.name: w.replicas for w in cfg.platform.workloads}, name="Deploy the application"
        )
        run.optional(
            "Update DNS",
            "Update DNS (if needed)",
            None if cfg.dns else "no [dns] in the config",
            update_dns,
        )
        return verify_service(run), [
            "environment rebuilt and serving",
            "watch error rates while DNS caches expire",
        ]

    # a rebuild that fails leaves what it built in place: there is no previous scale to go back to
    return run.execute(steps, keep_down=True, started=f"environment {cfg.environment}")


def _seconds_since(t: datetime) -> float:
    return (datetime.now(UTC) - t).total_seconds()


def _redis_mode(cfg: Any) -> Literal["server", "keys"]:
    """Into the server when the tool controls it, else key by key through the URL."""
    controlled = cfg.redis is not None and cfg.redis.control in ("local", "kubernetes")
    return "server" if controlled else "keys"
