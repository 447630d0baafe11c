"""Retention: a pure plan (``plan``) and a separate, manifest-first ``apply``.

Two policies share ``plan(backups, policy, now)``:

* ``AgePolicy`` (``dr backup --retention-days``): keep what is younger than a maximum age.
* ``TieredPolicy`` (``[retention]`` in dr.toml, the runbook's table): grandfather-father-son per
  location kind. A tier keeps its *representatives* (the newest backup of each UTC day, ISO week or
  calendar month, among the backups of the same target in the same location) while they are
  younger than the tier's window. Decisions are per backup *and location*: a backup may leave the
  local disk after 7 days and stay in S3 for a year. docs/retention.md defines it all.

Floors, whatever the policy: a backup whose time lies in the future (a clock problem is not a
reason to lose data), a pinned backup (``dr pin``), a backup a running restore holds a lease on,
the newest good and the newest verified backup of each target. ``now`` is a parameter, never read
from the clock here.

S3 Object Lock is the one hold the plan cannot see (it takes a request per object): ``keep_locked``
turns each delete of an S3 copy whose objects are locked at ``now`` (retention until a later date,
or a legal hold) into a keep naming the lock, and ``apply`` checks again just before deleting.
Nothing of a locked copy is deleted, not even its manifest: in a versioned bucket a plain DELETE
would only hide the locked versions behind delete markers, still stored and billed.

Pins and leases are small JSON objects next to the catalog (``_pins/<id>.json``,
``_leases/<id>/<token>.json``), never inside the immutable backup folder; the catalog only takes
folders named like backup ids, so ``_``-prefixed folders are never mistaken for backups.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from tasks.core import audit as audit_trail
from tasks.core.audit import AuditRecord
from tasks.core.catalog import BackupEntry, Catalog
from tasks.core.config import RetentionConfig
from tasks.core.errors import BackupNotFound, DRError, TransientError
from tasks.core.storage import Storage

if TYPE_CHECKING:
    from tasks.core.storage.s3 import ObjectLock

__all__ = [
    "LEASES",
    "LEASE_TTL",
    "PINS",
    "AgePolicy",
    "Candidate",
    "Decision",
    "Holds",
    "Lease",
    "Location",
    "Pin",
    "TieredPolicy",
    "Tiers",
    "acquire_lease",
    "apply",
    "candidates",
    "keep_locked",
    "lease",
    "object_lock",
    "pin",
    "plan",
    "read_holds",
    "read_pins",
    "release_lease",
    "unpin",
]

PINS = "_pins"
LEASES = "_leases"
LEASE_TTL = timedelta(hours=12)  # a crashed restore's lease stops protecting after this
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Location:
    url: str  # which location (``Storage.url``)
    kind: str  # ``Storage.name``: local, s3 (memory counts as local)


@dataclass(frozen=True)
class Candidate:
    backup_id: str
    database: str
    taken_at: datetime
    good: bool  # not known to be bad
    engine: str = "postgresql"
    verified: bool = False  # its last verification passed
    locations: tuple[Location, ...] = ()
    pinned: str | None = None  # the pin's reason
    leased: bool = False  # a running restore reads it


@dataclass(frozen=True)
class AgePolicy:
    """Keep backups younger than ``max_age`` (``--retention-days``)."""

    max_age: timedelta


@dataclass(frozen=True)
class Tiers:
    """How long each tier keeps its representatives in one kind of location (0: not at all)."""

    daily: timedelta
    weekly: timedelta = timedelta(0)
    monthly: timedelta = timedelta(0)


@dataclass(frozen=True)
class TieredPolicy:
    """The runbook's "Backup Retention Policy" table. Point-in-time (WAL) retention is not here:
    pgBackRest expires its own archive (docs/retention.md)."""

    local: Tiers = Tiers(7 * DAY, 30 * DAY)
    s3: Tiers = Tiers(30 * DAY, 90 * DAY, 365 * DAY)
    redis: Tiers = Tiers(7 * DAY)  # engine "redis" backups, in every location

    def tiers(self, engine: str, kind: str) -> Tiers:
        if engine == "redis":
            return self.redis
        return self.s3 if kind == "s3" else self.local

    @classmethod
    def from_config(cls, rc: RetentionConfig) -> TieredPolicy:
        return cls(
            Tiers(
                rc.local_daily_days * DAY, rc.local_weekly_days * DAY, rc.local_monthly_days * DAY
            ),
            Tiers(rc.s3_daily_days * DAY, rc.s3_weekly_days * DAY, rc.s3_monthly_days * DAY),
            Tiers(rc.redis_days * DAY),
        )


@dataclass(frozen=True)
class Decision:
    backup_id: str
    database: str
    keep: bool
    reason: str
    location: str | None = None  # the location url it applies to; None: every location
    locked: str | None = None  # the S3 Object Lock that keeps this copy, described


@dataclass(frozen=True)
class Pin:
    backup_id: str
    reason: str
    pinned_at: datetime


@dataclass(frozen=True)
class Lease:
    backup_id: str
    token: str
    holder: str
    acquired_at: datetime
    expires_at: datetime

    @property
    def key(self) -> str:
        return f"{LEASES}/{self.backup_id}/{self.token}.json"


@dataclass(frozen=True)
class Holds:
    """What protects backups from retention besides the policy: pins and live leases."""

    pins: dict[str, Pin] = field(default_factory=dict)
    leased: frozenset[str] = frozenset()


def candidates(entries: Iterable[BackupEntry], holds: Holds | None = None) -> list[Candidate]:
    holds = holds or Holds()
    out = []
    for e in entries:
        last = e.last_verification
        pin_ = holds.pins.get(e.backup_id)
        out.append(
            Candidate(
                e.backup_id,
                e.manifest.database,
                e.manifest.consistent_at,
                e.good,
                engine=e.manifest.engine,
                verified=last is not None and last.ok,
                locations=tuple(Location(loc.url, loc.name) for loc in e.locations),
                pinned=None if pin_ is None else (pin_.reason or "no reason given"),
                leased=e.backup_id in holds.leased,
            )
        )
    return out


# ---- the plan -----------------------------------------------------------------------------------


def plan(
    backups: Sequence[Candidate], policy: AgePolicy | TieredPolicy, now: datetime
) -> list[Decision]:
    """Keep or delete each backup (per location with a TieredPolicy), with the reason; newest
    first. Pure: the same input always gives the same decisions."""
    floors = _floors(backups, now)
    ordered = sorted(backups, key=lambda c: (c.taken_at, c.backup_id), reverse=True)
    if isinstance(policy, AgePolicy):
        days = policy.max_age.total_seconds() / 86400
        out = []
        for b in ordered:
            if b.backup_id in floors:
                out.append(Decision(b.backup_id, b.database, True, floors[b.backup_id]))
            elif now - b.taken_at > policy.max_age:
                out.append(Decision(b.backup_id, b.database, False, f"older than {days:g} days"))
            else:
                out.append(Decision(b.backup_id, b.database, True, f"within {days:g} days"))
        return out
    reps = _representatives(backups, now)
    out = []
    for b in ordered:
        for loc in b.locations:
            if b.backup_id in floors:
                out.append(Decision(b.backup_id, b.database, True, floors[b.backup_id], loc.url))
                continue
            tiers = policy.tiers(b.engine, loc.kind)
            keep, reason = _tiered(b, tiers, reps[loc.url][b.backup_id], now)
            out.append(Decision(b.backup_id, b.database, keep, reason, loc.url))
    return out


def _floors(backups: Sequence[Candidate], now: datetime) -> dict[str, str]:
    """backup id -> why it is kept whatever the policy says."""
    newest_good: dict[tuple[str, str], Candidate] = {}
    newest_verified: dict[tuple[str, str], Candidate] = {}
    for b in backups:
        if b.taken_at > now:
            continue
        target = (b.engine, b.database)
        for newest, qualifies in ((newest_good, b.good), (newest_verified, b.verified)):
            cur = newest.get(target)
            if qualifies and (cur is None or b.taken_at > cur.taken_at):
                newest[target] = b
    out: dict[str, str] = {}
    for b in backups:
        target = (b.engine, b.database)
        if b.taken_at > now:
            out[b.backup_id] = "taken in the future (clock skew?): kept"
        elif b.pinned is not None:
            out[b.backup_id] = f"pinned ({b.pinned})"
        elif b.leased:
            out[b.backup_id] = "in use by a running restore (lease)"
        elif newest_good.get(target) is b:
            out[b.backup_id] = "newest good backup: always kept"
        elif newest_verified.get(target) is b:
            out[b.backup_id] = "newest verified backup: always kept"
    return out


def _periods(t: datetime) -> dict[str, str]:
    t = t.astimezone(UTC)
    year, week, _ = t.isocalendar()
    return {"daily": f"{t:%Y-%m-%d}", "weekly": f"{year}-W{week:02d}", "monthly": f"{t:%Y-%m}"}


def _representatives(
    backups: Sequence[Candidate], now: datetime
) -> dict[str, dict[str, dict[str, str]]]:
    """location url -> backup id -> tier -> period it represents ("weekly" -> "2026-W46"),
    computed among the backups of the same target held in that location."""
    newest: dict[tuple[str, str, str, str, str], Candidate] = {}
    for b in backups:
        if b.taken_at > now:
            continue
        for loc in b.locations:
            for tier, label in _periods(b.taken_at).items():
                key = (loc.url, b.engine, b.database, tier, label)
                cur = newest.get(key)
                if cur is None or (b.taken_at, b.backup_id) > (cur.taken_at, cur.backup_id):
                    newest[key] = b
    out: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for (url, _, _, tier, label), b in newest.items():
        out[url][b.backup_id][tier] = label
    return out


def _tiered(
    b: Candidate, tiers: Tiers, represents: dict[str, str], now: datetime
) -> tuple[bool, str]:
    age = now - b.taken_at
    for tier in ("daily", "weekly", "monthly"):
        window: timedelta = getattr(tiers, tier)
        if tier in represents and window > timedelta(0) and age <= window:
            return True, f"{tier} {represents[tier]} representative"
    days = tiers.daily.total_seconds() / 86400
    if age <= tiers.daily:
        return False, f"not the newest of {_periods(b.taken_at)['daily']} (daily keeps one a day)"
    return False, f"older than daily window ({days:g} d), no weekly/monthly representative"


# ---- S3 Object Lock -----------------------------------------------------------------------------


def object_lock(entry: BackupEntry, loc: Storage, now: datetime) -> str | None:
    """What keeps S3 from deleting the copy of ``entry`` in ``loc`` at ``now``, described
    (``locked until 2027-01-03T00:00Z (Object Lock COMPLIANCE)``): the latest retention and
    any legal hold among the current versions of its objects. None when nothing is locked, and
    for locations without Object Lock (any storage without ``lock_status``)."""
    lock_status = getattr(loc, "lock_status", None)
    if lock_status is None:
        return None
    locks: list[ObjectLock] = []
    for obj in loc.list(f"{entry.backup_id}/"):
        lock = lock_status(obj.key)
        if lock is not None and lock.active(now):
            locks.append(lock)
    if not locks:
        return None
    latest = max(locks, key=lambda lk: lk.until or now)
    return replace(latest, legal_hold=any(lk.legal_hold for lk in locks)).describe(now)


def decide(
    catalog: Catalog,
    backups: Sequence[BackupEntry],
    policy: AgePolicy | TieredPolicy,
    now: datetime,
) -> list[Decision]:
    """What ``policy`` decides for ``backups`` at ``now``, with the holds read from the catalog
    (pins, running restores) and every copy under S3 Object Lock kept and named: the plan that
    ``apply`` carries out and that every report shows."""
    holds = read_holds(catalog.locations, now)
    return keep_locked(backups, plan(candidates(backups, holds), policy, now), now)


def keep_locked(
    entries: Iterable[BackupEntry], decisions: Iterable[Decision], now: datetime
) -> list[Decision]:
    """``decisions`` with each delete of a copy under S3 Object Lock at ``now`` turned into a
    keep that names the lock (a delete for every location is split per location, so that the
    unlocked copies still follow the policy). Asks S3 once per object of each doomed copy."""
    by_id = {e.backup_id: e for e in entries}
    out: list[Decision] = []
    for d in decisions:
        entry = by_id.get(d.backup_id)
        if d.keep or entry is None:
            out.append(d)
            continue
        where = [loc for loc in entry.locations if d.location in (None, loc.url)]
        locks = {loc.url: lock for loc in where if (lock := object_lock(entry, loc, now))}
        if not locks:
            out.append(d)
            continue
        for loc in where:
            lock = locks.get(loc.url)
            if lock is None:
                out.append(replace(d, location=loc.url))
            else:
                reason = f"kept in {loc.url}: {lock} (the policy would delete it: {d.reason})"
                out.append(replace(d, keep=True, reason=reason, location=loc.url, locked=lock))
    return out


# ---- apply --------------------------------------------------------------------------------------


def apply(
    catalog: Catalog,
    entries: Iterable[BackupEntry],
    decisions: Iterable[Decision],
    *,
    now: datetime | None = None,
    approved_by: str = "retention policy (automatic)",
) -> int:
    """Delete what the plan says, manifest first, in the location each decision names (every
    location when it names none); returns how many copies were deleted. With ``now``, leases
    are read again just before deleting: a restore that started after the plan still wins.
    A copy under S3 Object Lock is never touched (``keep_locked``, checked here again).
    Every delete (and a failed one) is appended to the audit trail."""
    entries = list(entries)
    by_id = {e.backup_id: e for e in entries}
    leased = read_holds(catalog.locations, now).leased if now is not None else frozenset()
    deleted = 0
    for d in keep_locked(entries, decisions, now or datetime.now(UTC)):
        entry = by_id.get(d.backup_id)
        if d.keep or entry is None or d.backup_id in leased:
            continue
        where = [loc for loc in entry.locations if d.location in (None, loc.url)]
        if not where:
            continue
        detail = f"{d.reason}; from {', '.join(loc.url for loc in where)}"
        rec = AuditRecord(
            now or datetime.now(UTC), "retention-delete", entry.manifest.database, "ok",
            approved_by, backup_id=entry.backup_id, detail=detail,
        )  # fmt: skip
        try:
            catalog.delete(entry, where)
        except DRError as exc:
            audit_trail.record(catalog.locations, replace(rec, outcome=f"failed: {exc}"))
            raise
        audit_trail.record(catalog.locations, rec)
        deleted += len(where)
    return deleted


# ---- holds: pins and leases ---------------------------------------------------------------------


def _put_everywhere(locations: Sequence[Storage], key: str, body: bytes) -> list[str]:
    written, errors = [], []
    for loc in locations:
        try:
            loc.put(key, body)
            written.append(loc.url)
        except (DRError, OSError) as exc:
            errors.append(f"{loc.url}: {exc}")
    if not written:
        raise TransientError(f"could not write {key} anywhere: " + "; ".join(errors))
    return written


def pin(
    catalog: Catalog, backup_id: str, reason: str, now: datetime
) -> tuple[BackupEntry, list[str]]:
    """Protect a backup from retention in every location; returns it and where the pin is."""
    entry = catalog.get(backup_id)
    body = json.dumps(
        {"backup_id": entry.backup_id, "reason": reason, "pinned_at": now.isoformat()}, indent=2
    )
    return entry, _put_everywhere(
        catalog.locations, f"{PINS}/{entry.backup_id}.json", body.encode() + b"\n"
    )


def unpin(catalog: Catalog, backup_id: str) -> list[str]:
    """Remove the pin of ``backup_id`` (an exact id or unique prefix of a pinned backup)."""
    pins = read_pins(catalog.locations)
    found = [p for p in pins if p == backup_id] or [p for p in pins if p.startswith(backup_id)]
    if len(found) != 1:
        raise BackupNotFound(
            f"no pinned backup {backup_id!r}"
            if not found
            else f"{backup_id!r} matches several pinned backups: {', '.join(found[:5])}"
        )
    removed = []
    for loc in catalog.locations:
        if loc.stat(f"{PINS}/{found[0]}.json") is not None:
            loc.delete(f"{PINS}/{found[0]}.json")
            removed.append(loc.url)
    return removed


def read_pins(locations: Sequence[Storage]) -> dict[str, Pin]:
    """Every pin in any location (a pin anywhere protects everywhere)."""
    out: dict[str, Pin] = {}
    for raw in _read_all(locations, f"{PINS}/"):
        try:
            d = json.loads(raw)
            p = Pin(str(d["backup_id"]), str(d.get("reason", "")), _time(d["pinned_at"]))
        except (ValueError, KeyError, TypeError):
            continue
        out.setdefault(p.backup_id, p)
    return out


def read_holds(locations: Sequence[Storage], now: datetime | None) -> Holds:
    """Pins, and the backups with a lease that has not expired at ``now`` (every lease, expired
    or not, when ``now`` is None: the conservative answer)."""
    leased = set()
    for raw in _read_all(locations, f"{LEASES}/"):
        try:
            d = json.loads(raw)
            if now is None or _time(d["expires_at"]) > now:
                leased.add(str(d["backup_id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return Holds(read_pins(locations), frozenset(leased))


def acquire_lease(
    locations: Sequence[Storage], backup_id: str, now: datetime, holder: str, ttl: timedelta
) -> Lease:
    """Write a lease in every location that takes it. Best effort: a restore never fails
    because a location refused a small object (the other floors still hold)."""
    lease_ = Lease(backup_id, secrets.token_hex(8), holder, now, now + ttl)
    body = json.dumps(
        {
            "backup_id": backup_id,
            "holder": holder,
            "acquired_at": now.isoformat(),
            "expires_at": lease_.expires_at.isoformat(),
        },
        indent=2,
    )
    with contextlib.suppress(DRError):
        _put_everywhere(locations, lease_.key, body.encode() + b"\n")
    return lease_


def release_lease(locations: Sequence[Storage], lease_: Lease) -> None:
    for loc in locations:
        with contextlib.suppress(DRError, OSError):  # an unreleased lease ages out
            loc.delete(lease_.key)


@contextlib.contextmanager
def lease(
    locations: Sequence[Storage],
    backup_id: str,
    now: datetime,
    holder: str,
    ttl: timedelta = LEASE_TTL,
) -> Iterator[Lease]:
    """Hold a lease on ``backup_id`` for the duration of the block."""
    held = acquire_lease(locations, backup_id, now, holder, ttl)
    try:
        yield held
    finally:
        release_lease(locations, held)


def _read_all(locations: Sequence[Storage], prefix: str) -> Iterator[bytes]:
    for loc in locations:
        try:
            keys = [o.key for o in loc.list(prefix) if o.key.endswith(".json")]
        except (DRError, OSError):
            continue
        for key in keys:
            try:
                raw = loc.read(key)
            except (DRError, OSError):  # FileNotFoundError: released meanwhile
                continue
            yield raw


def _time(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)
