"""Retention: a pure plan (``plan``) and a separate, manifest-first ``apply``.

The plan never deletes the newest good backup of a database, whatever its age, nor a backup
whose time lies in the future (a clock problem is not a reason to lose data). ``now`` is a
parameter, never read from the clock here. The daily/weekly/monthly policy joins as another
policy type with the same ``plan`` signature.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tasks.core.catalog import BackupEntry, Catalog

__all__ = ["AgePolicy", "Candidate", "Decision", "apply", "candidates", "plan"]


@dataclass(frozen=True)
class Candidate:
    backup_id: str
    database: str
    taken_at: datetime
    good: bool


@dataclass(frozen=True)
class AgePolicy:
    """Keep backups younger than ``max_age`` (``--retention-days``)."""

    max_age: timedelta


@dataclass(frozen=True)
class Decision:
    backup_id: str
    database: str
    keep: bool
    reason: str


def candidates(entries: Iterable[BackupEntry]) -> list[Candidate]:
    return [
        Candidate(e.backup_id, e.manifest.database, e.manifest.consistent_at, e.good)
        for e in entries
    ]


def plan(backups: Sequence[Candidate], policy: AgePolicy, now: datetime) -> list[Decision]:
    """Keep or delete each backup, with the reason; newest first."""
    newest_good: dict[str, Candidate] = {}
    for b in backups:
        if b.good and b.taken_at <= now:
            cur = newest_good.get(b.database)
            if cur is None or b.taken_at > cur.taken_at:
                newest_good[b.database] = b
    days = policy.max_age.total_seconds() / 86400
    out: list[Decision] = []
    for b in sorted(backups, key=lambda c: c.taken_at, reverse=True):
        if b.taken_at > now:
            out.append(
                Decision(b.backup_id, b.database, True, "taken in the future (clock skew?): kept")
            )
        elif newest_good.get(b.database) is b:
            out.append(Decision(b.backup_id, b.database, True, "newest good backup: always kept"))
        elif now - b.taken_at > policy.max_age:
            out.append(Decision(b.backup_id, b.database, False, f"older than {days:g} days"))
        else:
            out.append(Decision(b.backup_id, b.database, True, f"within {days:g} days"))
    return out


def apply(catalog: Catalog, entries: Iterable[BackupEntry], decisions: Iterable[Decision]) -> int:
    """Delete what the plan says, manifest first in every location; returns how many."""
    by_id = {e.backup_id: e for e in entries}
    deleted = 0
    for d in decisions:
        if not d.keep and d.backup_id in by_id:
            catalog.delete(by_id[d.backup_id])
            deleted += 1
    return deleted
