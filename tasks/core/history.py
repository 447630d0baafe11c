"""Run history: what every backup run, verification, restore test and drill measured.

Kept next to the catalog, in the same locations, under ``_history/<kind>/`` (a folder the
catalog never mistakes for a backup): one small JSON record per run, written once, never
rewritten. ``dr status`` and the monitor read the trend from it; drills prove the objectives.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from tasks.core.errors import DRError
from tasks.core.storage import Storage

__all__ = ["HISTORY_PREFIX", "Record", "read_history", "record_run"]

HISTORY_PREFIX = "_history"
Kind = Literal["backup", "verification", "restore-test", "drill"]


@dataclass(frozen=True)
class Record:
    kind: Kind
    environment: str
    target: str  # the database (by config name) or "<scenario>" for drills
    started_at: datetime
    finished_at: datetime
    ok: bool
    detail: str = ""
    backup_id: str | None = None
    rto_s: float | None = None  # restore tests: restore duration; drills: start -> healthy
    rpo_s: float | None = None
    rto_objective_s: float | None = None
    rpo_objective_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rto_met(self) -> bool | None:
        if self.rto_s is None or self.rto_objective_s is None:
            return None
        return self.rto_s <= self.rto_objective_s

    @property
    def rpo_met(self) -> bool | None:
        if self.rpo_s is None or self.rpo_objective_s is None:
            return None
        return self.rpo_s <= self.rpo_objective_s

    def key(self) -> str:
        stamp = self.started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"{HISTORY_PREFIX}/{self.kind}/{stamp}-{self.target}-{secrets.token_hex(2)}.json"

    def to_bytes(self) -> bytes:
        body = asdict(self)
        for k in ("started_at", "finished_at"):
            body[k] = getattr(self, k).astimezone(UTC).isoformat()
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Record | None:
        try:
            body = json.loads(raw)
            body["started_at"] = datetime.fromisoformat(body["started_at"])
            body["finished_at"] = datetime.fromisoformat(body["finished_at"])
            return cls(**body)
        except (ValueError, KeyError, TypeError):
            return None  # an unreadable record is skipped, never guessed at


def record_run(locations: Sequence[Storage], record: Record) -> list[str]:
    """Write ``record`` to every location that takes it; returns where it was written.
    History is evidence, not data: a location that refuses it does not fail the run."""
    key = record.key()
    body = record.to_bytes()
    written = []
    for loc in locations:
        with contextlib.suppress(DRError, OSError):
            loc.put(key, body)
            written.append(loc.url)
    return written


def read_history(
    locations: Sequence[Storage], kind: Kind | None = None, target: str | None = None
) -> list[Record]:
    """Every readable record (deduplicated across locations), newest first."""
    prefix = f"{HISTORY_PREFIX}/{kind}/" if kind else f"{HISTORY_PREFIX}/"
    seen: dict[str, Record] = {}
    for loc in locations:
        try:
            keys = [o.key for o in loc.list(prefix) if o.key.endswith(".json")]
        except DRError:
            continue
        for key in keys:
            name = key.rsplit("/", 1)[-1]
            if name in seen:
                continue
            try:
                rec = Record.from_bytes(loc.read(key))
            except (DRError, FileNotFoundError):
                continue
            if rec is not None and (target is None or rec.target == target):
                seen[name] = rec
    return sorted(seen.values(), key=lambda r: r.started_at, reverse=True)
