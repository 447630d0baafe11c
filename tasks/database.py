"""Database steps of the scenarios, as Prefect tasks over tasks/core."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger
from prefect.runtime import flow_run

from tasks._base import dr_task, progress_artifact
from tasks.core import dbcheck
from tasks.core import restore as core_restore
from tasks.core.catalog import BackupEntry
from tasks.core.config import Config, CriticalQuery
from tasks.core.engines.postgres import PostgresEngine
from tasks.core.environment import build_catalog, encryption_key
from tasks.core.report import Check


@dr_task(retries=2)
def check_database(cfg: Config, database: str) -> dbcheck.DatabaseCheck:
    """Connectivity, SELECT 1 and pg_amcheck: confirms (or not) the corruption."""
    return dbcheck.check_database(cfg.database(database).resolve_url())


@dr_task(retries=2)
def list_backups(cfg: Config, database: str | None = None) -> list[BackupEntry]:
    """Every committed backup, newest first (of ``database``'s source name if given)."""
    return build_catalog(cfg).list(database).backups


@dr_task(retries=2)
def select_backup(
    cfg: Config, database: str, backup_id: str | None = None, before: datetime | None = None
) -> BackupEntry:
    """The backup to restore: by id, else the newest good one (taken before ``before``)."""
    catalog = build_catalog(cfg)
    if backup_id:
        return catalog.get(backup_id)
    url = cfg.database(database).resolve_url()
    return catalog.select_for(url.dbname, url.engine, before=before)


@dr_task()
def plan_restore(cfg: Config, database: str, entry: BackupEntry) -> core_restore.RestorePlan:
    return core_restore.plan_restore(
        cfg.database(database).resolve_url(), entry, drop_existing=False, now=datetime.now(UTC)
    )


@dr_task()
def restore_database(
    cfg: Config, plan: core_restore.RestorePlan, approved_by: str
) -> core_restore.RestoreResult:
    """Side copy -> verify counts -> switch; the previous database is kept. Not retried: a
    restore that failed has cleaned up after itself and needs a human to look. The key of an
    encrypted backup comes from [encryption]; ``approved_by`` goes to the audit trail."""
    with progress_artifact(
        "restore-progress", f"fetching {plan.entry.backup_id}", plan.entry.manifest.size
    ) as progress:
        return core_restore.restore(
            plan,
            confirm=True,
            progress=progress,
            encryption=encryption_key(cfg),
            approved_by=approved_by,
            audit_context={"environment": cfg.environment, "flow_run": str(flow_run.id)},
            stage=get_run_logger().info,  # each pg_restore pass, the counts, the switch
        )


@dr_task(retries=2)
def verify_counts(
    cfg: Config, database: str, entry: BackupEntry, extra: list[CriticalQuery] | None = None
) -> list[Check]:
    """Count the live database again, after the switch, against the backup's manifest, and
    run the configured critical queries plus the caller's ``extra`` ones."""
    url = cfg.database(database).resolve_url()
    checks: list[Check] = []
    if url.engine == "postgresql":
        actual = PostgresEngine(url).verify_side(url.dbname, entry.manifest)
        checks += [
            Check(t, str(e), "missing" if a is None else str(a), e == a)
            for t, (e, a, _) in actual.items()
        ]
    else:
        from pathlib import Path

        from tasks.core.engines.sqlite import count_rows

        assert url.path is not None
        actual_rows = count_rows(Path(url.path))
        checks += [
            Check(t, str(n), str(actual_rows.get(t, "missing")), actual_rows.get(t) == n)
            for t, n in entry.manifest.counts.items()
        ]
    queries = [*cfg.database(database).critical_queries, *(extra or [])]
    return checks + dbcheck.run_critical_queries(url, queries)
