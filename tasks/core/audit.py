"""The audit trail: one record per destructive action, append-only, next to the catalog.

Every restore, switch-over, database drop, secret rotation, retention delete and scale writes a
record saying what was done to which target, from which backup, who or what approved it, when,
and how it ended. Records live in every backup location under ``_audit/<yyyy-mm>/`` as one small
JSON object each, written once and never rewritten or deleted by this tool (retention leaves
``_audit/`` alone; with S3 Object Lock they cannot be deleted at all). A new object per record
keeps it append-only without a read-modify-write that two writers could race on.

Writing the trail never fails the action it describes (the action already happened): a location
that refuses the record is reported by ``record`` and the caller logs it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import secrets
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from tasks.core.errors import DRError
from tasks.core.storage import Storage

__all__ = ["AUDIT_PREFIX", "AuditRecord", "actor", "read_audit", "record"]

AUDIT_PREFIX = "_audit"


def actor() -> str:
    """``user@host`` of this process (what the audit trail calls the actor)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    action: str  # restore, switch, drop-database, rotate-secret, retention-delete, scale, ...
    target: str  # database, workload, secret or backup the action changed
    outcome: str  # "ok", or "failed: <one line>"
    approved_by: str  # "--confirm (root@host)", "UI approval by alice", "confirm=True (automation)"
    actor: str = ""  # user@host of the process that acted
    backup_id: str | None = None
    environment: str = ""
    detail: str = ""
    flow_run: str | None = None  # Prefect flow run id, when a flow acted

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def key(self) -> str:
        at = self.at.astimezone(UTC)
        return (
            f"{AUDIT_PREFIX}/{at:%Y-%m}/{at:%Y%m%dT%H%M%S.%fZ}-{self.action}-"
            f"{secrets.token_hex(3)}.json"
        )

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body["at"] = self.at.astimezone(UTC).isoformat()
        return (json.dumps(body, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> AuditRecord | None:
        try:
            body: dict[str, Any] = json.loads(raw)
            body["at"] = datetime.fromisoformat(body["at"])
            return cls(**body)
        except (ValueError, KeyError, TypeError):
            return None  # unreadable records are listed as such by read_audit's caller


def record(locations: Sequence[Storage], rec: AuditRecord) -> list[str]:
    """Append ``rec`` to every location; returns the urls of those that refused it."""
    rec = rec if rec.actor else _with_actor(rec)
    key, body = rec.key(), rec.to_bytes()
    refused = []
    for loc in locations:
        try:
            loc.put(key, body)
        except (DRError, OSError):
            refused.append(loc.url)
    return refused


def _with_actor(rec: AuditRecord) -> AuditRecord:
    return AuditRecord(**{**asdict(rec), "actor": actor()})


def read_audit(
    locations: Sequence[Storage], *, since: datetime | None = None
) -> tuple[list[AuditRecord], int]:
    """Every record (deduplicated across locations), oldest first, and how many objects could
    not be read."""
    seen: dict[str, AuditRecord] = {}
    unreadable: set[str] = set()
    for loc in locations:
        with contextlib.suppress(DRError):
            for obj in loc.list(f"{AUDIT_PREFIX}/"):
                name = obj.key.rsplit("/", 1)[-1]
                if name in seen or not name.endswith(".json"):
                    continue
                try:
                    rec = AuditRecord.from_bytes(loc.read(obj.key))
                except (DRError, FileNotFoundError):
                    rec = None
                if rec is None:
                    unreadable.add(name)
                    continue
                unreadable.discard(name)
                seen[name] = rec
    records = sorted(seen.values(), key=lambda r: r.at)
    if since is not None:
        records = [r for r in records if r.at >= since]
    return records, len(unreadable)
