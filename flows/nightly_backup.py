"""Runbook "Automated Backups": every night at 02:00 UTC, every configured database is backed up
to every location, its checksums are verified where it landed, retention is applied, and the run
is recorded (the monitor alerts on two failures in a row)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._ops import finish, record
from tasks import backup as backup_tasks
from tasks.core.config import load_config
from tasks.core.dburl import redact


@flow(name="nightly-backup", log_prints=True)
def nightly_backup(config: str = "") -> State[Any]:
    """Back up every database of the environment and verify what was written.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
    """
    cfg = load_config(config or None)
    rows, failures = [], []
    for db in cfg.databases:
        started = datetime.now(UTC)
        backup_id, size, ok = None, None, False
        try:
            result = backup_tasks.take_backup(cfg, db.name, "nightly")
            backup_id, size = result.manifest.backup_id, result.manifest.size
            check = backup_tasks.verify_backups(cfg, backup_id=backup_id)
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
                f"stored in {len(result.committed)} location(s), checksums verified"
            )
        except Exception as exc:  # recorded and reported: one database must not stop the rest
            detail = redact(str(exc)) or type(exc).__name__
        record(
            cfg,
            "backup",
            db.name,
            started,
            ok,
            detail,
            backup_id=backup_id,
            extra={"size": size} if size is not None else {},
        )
        rows.append({"database": db.name, "backup": backup_id or "-", "ok": ok, "detail": detail})
        if not ok:
            failures.append(f"{db.name}: {detail}")
    return finish(cfg, "nightly-backup", rows, failures)
