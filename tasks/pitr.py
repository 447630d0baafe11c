"""Physical backups and point-in-time recovery (pgBackRest) as Prefect tasks over tasks/core."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from tasks._base import dr_task
from tasks.core import pitr as core_pitr
from tasks.core.config import Config, CriticalQuery
from tasks.core.dbcheck import run_critical_queries
from tasks.core.engines.pgbackrest import BackupType, VerifyOutcome
from tasks.core.report import Check


@dr_task()
def pitr_setup(cfg: Config, restart: bool = False) -> core_pitr.SetupResult:
    """pgbackrest.conf, stanza, archive_command, check (idempotent)."""
    return core_pitr.setup(cfg, restart=restart)


@dr_task()
def backup_physical(cfg: Config, kind: BackupType = "full") -> core_pitr.PhysicalBackupResult:
    """A pgBackRest backup into every repository. Not retried: pgBackRest resumes or
    restarts an interrupted backup on the next run."""
    return core_pitr.backup_physical(cfg, kind)


@dr_task(retries=2)
def recoverable_window(cfg: Config, flush: bool = False) -> core_pitr.Window:
    """Earliest and latest reachable point, and the age of the newest archived WAL."""
    return core_pitr.recoverable_window(cfg, datetime.now(UTC), flush=flush)


@dr_task()
def plan_pitr(cfg: Config, target: core_pitr.Target) -> core_pitr.PitrPlan:
    """The target checked against the window; a bad one fails here, nothing changed."""
    return core_pitr.plan_pitr(cfg, target, datetime.now(UTC))


@dr_task()
def pitr_restore(
    cfg: Config, plan: core_pitr.PitrPlan, extra_checks: Sequence[CriticalQuery] = ()
) -> core_pitr.PitrResult:
    """New data directory -> recover to the target -> verify -> switch over -> promote. Not
    retried: a failed restore has cleaned up after itself (or put the old server back)."""
    return core_pitr.pitr_restore(cfg, plan, confirm=True, extra_checks=extra_checks, say=print)


@dr_task(retries=2)
def pgbackrest_verify(cfg: Config) -> VerifyOutcome:
    """``pgbackrest verify`` plus the WAL gap check."""
    return core_pitr.verify_repository(cfg)


@dr_task(retries=2)
def check_live(cfg: Config, database: str, extra: Sequence[CriticalQuery] = ()) -> list[Check]:
    """The configured critical queries plus ``extra`` on the live database, after the switch."""
    db = cfg.database(database)
    return run_critical_queries(db.resolve_url(), [*db.critical_queries, *extra])
