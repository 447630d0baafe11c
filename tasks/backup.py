"""Scheduled-operation steps (backup, verification, restore test, history) as Prefect tasks."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks._base import dr_task, progress_artifact
from tasks.core import history, restoretest
from tasks.core import verify as core_verify
from tasks.core.backup import BackupResult, backup_database
from tasks.core.catalog import BackupEntry
from tasks.core.config import Config
from tasks.core.environment import build_catalog, encryption_key


@dr_task()
def take_backup(cfg: Config, database: str, trigger: str) -> BackupResult:
    """Back up one database to every location, then sweep and apply retention. Not retried:
    a failed run leaves no backup behind and the next run starts clean."""
    url = cfg.database(database).resolve_url()
    catalog = build_catalog(cfg)
    previous = catalog.list(url.dbname).backups
    estimate = previous[0].manifest.artefacts[0].raw_size if previous else None
    with progress_artifact(
        f"backup-progress-{database.lower()}", f"backup of {database}", estimate
    ) as progress:
        return backup_database(
            url,
            catalog,
            progress=progress,
            # with [retention] the nightly flow applies the tiered policy once, after all backups
            retention_days=None if cfg.retention else cfg.storage.retention_days,
            labels={"trigger": trigger},
        )


@dr_task(retries=2)
def verify_backups(
    cfg: Config, latest: bool = True, backup_id: str | None = None
) -> core_verify.VerifyReport:
    """Checksums and archive readability in every location (only ``backup_id`` if given)."""
    catalog = build_catalog(cfg)
    if backup_id is None:
        return core_verify.verify_catalog(
            catalog,
            now=datetime.now(UTC),
            latest=latest,
            require_immutable=cfg.storage.require_immutable,
            versioned_buckets=cfg.storage.versioned_buckets,
        )
    return core_verify.VerifyReport(
        core_verify.verify_and_record(catalog, catalog.get(backup_id), now=datetime.now(UTC))
    )


@dr_task()
def restore_test(cfg: Config, database: str, entry: BackupEntry) -> restoretest.RestoreTestResult:
    """Restore into a scratch target, smoke-test, tear down (also on failure)."""
    db = cfg.database(database)
    return restoretest.run_restore_test(
        entry,
        db.resolve_url(),
        db.critical_queries,
        scratch_server=db.scratch_server(),
        encryption=encryption_key(cfg),
    )


@dr_task(retries=2)
def record_run(cfg: Config, record: history.Record) -> list[str]:
    """Keep the run's figures next to the catalog (dr status and the monitor read them)."""
    return history.record_run(build_catalog(cfg).locations, record)
