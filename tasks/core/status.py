"""``dr status``: per database (and Redis, when configured), the newest backup and the newest
restore test; per environment, the newest drill, each against the recovery objectives. Read from
the catalog and the history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tasks.core.catalog import BackupEntry
from tasks.core.config import Config
from tasks.core.environment import build_catalog
from tasks.core.history import Record, read_history
from tasks.core.monitor import targets

__all__ = ["Status", "environment_status"]


@dataclass(frozen=True)
class Status:
    database: str  # config name
    source: str  # the database name backups are filed under
    last_backup: BackupEntry | None
    last_backup_run: Record | None
    last_restore_test: Record | None
    last_drill: Record | None
    now: datetime

    @property
    def backup_age_s(self) -> float | None:
        if self.last_backup is None:
            return None
        return (self.now - self.last_backup.manifest.consistent_at).total_seconds()


def environment_status(cfg: Config, now: datetime) -> list[Status]:
    catalog = build_catalog(cfg)
    backups = catalog.list().backups
    history = read_history(catalog.locations)
    drills = [r for r in history if r.kind == "drill"]
    out = []
    for t in targets(cfg):
        mine = [e for e in backups if t.owns(e)]
        runs = [r for r in history if r.kind == "backup" and r.target == t.name]
        tests = [r for r in history if r.kind == "restore-test" and r.target == t.name]
        out.append(
            Status(
                t.name,
                t.source,
                mine[0] if mine else None,
                runs[0] if runs else None,
                tests[0] if tests else None,
                drills[0] if drills else None,
                now,
            )
        )
    return out
