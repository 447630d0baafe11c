"""Runbook "Automated Backups": every night at 02:00 UTC, every configured database is backed up
to every location, its checksums are verified where it landed, retention is applied, and the run
is recorded (the monitor alerts on two failures in a row)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from prefect import flow
from prefect.states import State

from flows._ops import finish, record
from tasks import backup as backup_tasks
from tasks import monitor as monitor_tasks
from tasks import pitr as pitr_tasks
from tasks import redis as redis_tasks
from tasks.core.backup import BackupResult
from tasks.core.config import Config, load_config
from tasks.core.dburl import redact
from tasks.core.verify import VerifyReport


@flow(name="nightly-backup", log_prints=True)
def nightly_backup(config: str = "") -> State[Any]:
    """Back up every database of the environment and verify what was written.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
    """
    cfg = load_config(config or None)
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for db in cfg.databases:
        rows.append(
            _backup_and_verify(
                cfg,
                db.name,
                partial(backup_tasks.take_backup, cfg, db.name, "nightly"),
                lambda backup_id: backup_tasks.verify_backups(cfg, backup_id=backup_id),
                "checksums verified",
                failures,
            )
        )
    if cfg.pitr is not None:  # pgBackRest: a full physical backup; expiry is pgBackRest's
        rows.append(_physical_backup(cfg, failures))
    if cfg.redis is not None:  # runbook "Redis Backups": daily snapshots, 7 days
        rows.append(
            _backup_and_verify(
                cfg,
                cfg.redis.name,
                lambda: redis_tasks.backup_redis(cfg, "nightly"),
                lambda backup_id: redis_tasks.verify_redis_backup(cfg, backup_id),
                "RDB and checksums verified",
                failures,
            )
        )
    if cfg.retention is not None and not failures:  # a night that failed deletes nothing
        try:
            decisions = monitor_tasks.apply_retention(cfg, datetime.now(UTC))
            gone = [d for d in decisions if not d.keep]
            detail = f"tiered retention: {len(gone)} deleted, {len(decisions) - len(gone)} kept"
            rows.append({"database": "(retention)", "backup": "-", "ok": True, "detail": detail})
        except Exception as exc:
            failures.append(f"retention: {redact(str(exc)) or type(exc).__name__}")
    return finish(cfg, "nightly-backup", rows, failures)


def _physical_backup(cfg: Config, failures: list[str]) -> dict[str, Any]:
    started = datetime.now(UTC)
    target = f"pitr:{cfg.pitr.stanza if cfg.pitr else '-'}"
    try:
        result = pitr_tasks.backup_physical(cfg, "full")
        label = ", ".join(b.label for b in result.backups) or "-"
        ok, detail = True, f"pgBackRest full backup in {result.duration_s:.1f}s"
    except Exception as exc:  # recorded and reported like a logical backup failure
        label, ok, detail = "-", False, redact(str(exc)) or type(exc).__name__
        failures.append(f"{target}: {detail}")
    record(cfg, "backup", target, started, ok, detail, backup_id=None if label == "-" else label)
    return {"database": target, "backup": label, "ok": ok, "detail": detail}


def _backup_and_verify(
    cfg: Config,
    target: str,
    take: Callable[[], BackupResult],
    verify: Callable[[str], VerifyReport],
    verified: str,
    failures: list[str],
) -> dict[str, Any]:
    """Take one backup (a database, or the Redis snapshot), verify it where it landed, record
    the run in the history and return its report row; a failure is added to ``failures``,
    never raised: one target must not stop the rest."""
    started = datetime.now(UTC)
    backup_id, size, ok = None, None, False
    try:
        result = take()
        backup_id, size = result.manifest.backup_id, result.manifest.size
        check = verify(backup_id)
        problems = [f"not stored in {k}: {v}" for k, v in result.failed.items()]
        problems += [
            f"{r.location}: {r.status.value} {r.detail}"
            for r in check.results
            if r.status.value != "OK"
        ]
        if result.housekeeping_error:
            problems.append(f"housekeeping: {result.housekeeping_error}")
        ok = not problems
        detail = "; ".join(problems) or (
            f"stored in {len(result.committed)} location(s), {verified}"
        )
    except Exception as exc:  # recorded and reported in the run's table
        detail = redact(str(exc)) or type(exc).__name__
    if not ok:
        failures.append(f"{target}: {detail}")
    record(
        cfg,
        "backup",
        target,
        started,
        ok,
        detail,
        backup_id=backup_id,
        extra={"size": size} if size is not None else {},
    )
    return {"database": target, "backup": backup_id or "-", "ok": ok, "detail": detail}
