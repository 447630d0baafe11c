"""Redis steps (backup, verification, restore) as Prefect tasks over tasks/core/redis_backup."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks._base import dr_task, progress_artifact
from tasks.core import redis_backup
from tasks.core import verify as core_verify
from tasks.core.backup import BackupResult
from tasks.core.catalog import BackupEntry
from tasks.core.config import Config, RedisConfig
from tasks.core.environment import build_catalog, encryption_key, open_platform
from tasks.core.errors import ConfigError


@dr_task()
def backup_redis(cfg: Config, trigger: str) -> BackupResult:
    """Snapshot the configured Redis to every location, then sweep and apply its retention.
    Not retried: a failed run leaves no backup behind and the next run starts clean."""
    rc = _redis(cfg)
    catalog = build_catalog(cfg)
    previous = catalog.list(rc.name).backups
    estimate = previous[0].manifest.artefacts[0].raw_size if previous else None
    with progress_artifact("backup-progress-redis", f"snapshot of {rc.name}", estimate) as progress:
        return redis_backup.backup_redis(
            redis_backup.parse_redis_url(rc.resolve_url()),
            catalog,
            name=rc.name,
            progress=progress,
            # with [retention] its redis_days govern, once, after all backups of the night
            retention_days=None if cfg.retention else rc.retention_days,
            labels={"trigger": trigger},
        )


@dr_task(retries=2)
def verify_redis_backup(cfg: Config, backup_id: str) -> core_verify.VerifyReport:
    """sha256, RDB structure, CRC64 and keys per db, in every location holding the backup."""
    catalog = build_catalog(cfg)
    return core_verify.VerifyReport(
        core_verify.verify_and_record(catalog, catalog.get(backup_id), now=datetime.now(UTC))
    )


@dr_task()
def restore_redis(
    cfg: Config, entry: BackupEntry, mode: redis_backup.Mode = "server"
) -> redis_backup.RedisRestoreResult:
    """Verify the snapshot, then put it into the configured Redis (writers stopped meanwhile).
    Not retried: a restore that failed says what state it left, for a human to look at."""
    rc = _redis(cfg)
    url = redis_backup.parse_redis_url(rc.resolve_url())
    plan = redis_backup.plan_redis_restore(
        url, entry, mode=mode, control=rc.control, writers=rc.writers, now=datetime.now(UTC)
    )
    with open_platform(cfg) as platform, redis_backup.server_control(cfg, url) as server:
        return redis_backup.restore_redis(
            plan,
            confirm=True,
            server=server,
            platform=platform if rc.writers else None,
            ready_timeout_s=rc.ready_timeout_s,
            encryption=encryption_key(cfg),
        )


def _redis(cfg: Config) -> RedisConfig:
    if cfg.redis is None:
        raise ConfigError("no [redis] section in the config")
    return cfg.redis
