"""The communication plan: who must be told about an incident, when, and what they are told.

Runbook "Communication Plan": on-call at once; engineering within 15 minutes and management within
30 minutes of an incident that is still unresolved; users when downtime exceeds 1 hour;
stakeholders when data was lost or there was a breach. Resolution goes to everyone who was told.

An incident is a scenario run (opened when it starts, resolved when it ends) or a monitor alert
(opened when it fires, resolved when its condition clears). Open incidents are small JSON objects
in the first backup location, ``_incidents/<key>.json``; the record says who was told when, so
nobody is told twice. ``due`` is pure; ``open_incident``, ``escalate`` and ``resolve`` drive it
with a ``send`` callback (the task layer passes the Prefect notification blocks), so delivery is
tested without Prefect. docs/communication.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from tasks.core.config import CommunicationConfig
from tasks.core.dburl import redact
from tasks.core.storage import Storage
from tasks.core.units import utc

__all__ = [
    "AUDIENCES",
    "INCIDENTS",
    "Incident",
    "IncidentStore",
    "Send",
    "Timing",
    "due",
    "escalate",
    "message",
    "open_incident",
    "resolution_message",
    "resolve",
]

INCIDENTS = "_incidents"
AUDIENCES = ("on-call", "engineering", "management", "users", "stakeholders")

# send(audience, subject, body) -> True when the audience counts as told (reached, or nobody is
# configured for it); False to try again at the next check
Send = Callable[[str, str, str], bool]


@dataclass(frozen=True)
class Timing:
    """When each audience is due, from ``[communication]``. An internal audience is told at the
    last check before its deadline (``check_every`` early at most), so "within 15 minutes" holds
    with a check every 5 minutes; users only once downtime has really exceeded the threshold."""

    engineering_after: timedelta = timedelta(minutes=15)
    management_after: timedelta = timedelta(minutes=30)
    users_after_downtime: timedelta = timedelta(minutes=60)
    check_every: timedelta = timedelta(minutes=5)

    @classmethod
    def from_config(cls, cc: CommunicationConfig) -> Timing:
        return cls(
            timedelta(minutes=cc.engineering_after_minutes),
            timedelta(minutes=cc.management_after_minutes),
            timedelta(minutes=cc.users_after_downtime_minutes),
            timedelta(minutes=cc.check_every_minutes),
        )


@dataclass(frozen=True)
class Incident:
    key: str  # "scenario:database-corruption:<run id>", "alert:backup-stale:main"
    name: str  # short: "database-corruption", "backup-stale main"
    title: str  # the first message's subject: "database-corruption started"
    environment: str
    opened_at: datetime
    what_happened: str
    being_done: str
    rto_objective_s: float | None = None  # scenarios: the RTO clock runs from opened_at
    downtime_since: datetime | None = None  # users are told when this exceeds the threshold
    data_loss: bool = False
    breach: bool = False
    run_url: str | None = None
    told: dict[str, datetime] = field(default_factory=dict)  # audience -> when

    def to_bytes(self) -> bytes:
        body = asdict(self)
        for k in ("opened_at", "downtime_since"):
            body[k] = None if body[k] is None else body[k].isoformat()
        body["told"] = {a: t.isoformat() for a, t in self.told.items()}
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Incident | None:
        try:
            body: dict[str, Any] = json.loads(raw)
            body["opened_at"] = datetime.fromisoformat(body["opened_at"])
            if body.get("downtime_since"):
                body["downtime_since"] = datetime.fromisoformat(body["downtime_since"])
            body["told"] = {a: datetime.fromisoformat(t) for a, t in body["told"].items()}
            return cls(**body)
        except (ValueError, KeyError, TypeError):
            return None


def due(incident: Incident, now: datetime, timing: Timing) -> list[tuple[str, str]]:
    """The audiences that must be told now and were not yet, each with why; pure."""
    open_for = now - incident.opened_at
    early = timing.check_every
    rules: list[tuple[str, bool, str]] = [
        ("on-call", True, "on-call is told at once"),
        (
            "engineering",
            open_for >= timing.engineering_after - early,
            f"unresolved after {_minutes(open_for)}",
        ),
        (
            "management",
            open_for >= timing.management_after - early,
            f"unresolved after {_minutes(open_for)}",
        ),
        (
            "users",
            incident.downtime_since is not None
            and now - incident.downtime_since > timing.users_after_downtime,
            f"downtime exceeds {_minutes(timing.users_after_downtime)}",
        ),
        (
            "stakeholders",
            incident.data_loss or incident.breach,
            "a security breach" if incident.breach else "data was lost",
        ),
    ]
    return [(aud, why) for aud, when, why in rules if when and aud not in incident.told]


def message(incident: Incident, audience: str, why: str, now: datetime) -> tuple[str, str]:
    """Subject and body: what happened, what is being done, the RTO clock, the flow run."""
    subject = incident.title
    if audience != "on-call":
        subject += f" ({why})"
    return redact(subject), redact("\n".join([*_facts(incident, now), f"Why you: {why}."]))


def resolution_message(incident: Incident, outcome: str, now: datetime) -> tuple[str, str]:
    lines = [
        f"Resolved: {outcome}.",
        f"Open from {utc(incident.opened_at)} to {utc(now)} "
        f"({_minutes(now - incident.opened_at)}).",
        f"What happened: {incident.what_happened}",
    ]
    if incident.run_url:
        lines.append(f"Flow run: {incident.run_url}")
    lines.append("Told: " + ", ".join(incident.told) + ".")
    return redact(f"{incident.name}: {outcome}"), redact("\n".join(lines))


def _facts(incident: Incident, now: datetime) -> list[str]:
    open_for = now - incident.opened_at
    if incident.rto_objective_s is not None:
        objective = timedelta(seconds=incident.rto_objective_s)
        left = objective - open_for
        clock = (
            f"RTO clock: {_minutes(open_for)} since the start, objective {_minutes(objective)} "
            + (f"({_minutes(left)} left)" if left >= timedelta(0) else "(MISSED)")
        )
    else:
        clock = f"Open for {_minutes(open_for)} (since {utc(incident.opened_at)})"
    lines = [
        f"What happened: {incident.what_happened}",
        f"What is being done: {incident.being_done}",
        clock,
    ]
    if incident.run_url:
        lines.append(f"Flow run: {incident.run_url}")
    if incident.told:
        lines.append("Already told: " + ", ".join(incident.told))
    return lines


def _minutes(d: timedelta) -> str:
    return f"{max(0, round(d.total_seconds() / 60))} min"


# ---- the store of open incidents -----------------------------------------------------------


class IncidentStore:
    """Open incidents, one object each, in one location (the catalog's first)."""

    def __init__(self, location: Storage) -> None:
        self.location = location

    @staticmethod
    def _key(key: str) -> str:
        return f"{INCIDENTS}/{re.sub(r'[^A-Za-z0-9_.-]+', '-', key)}.json"

    def get(self, key: str) -> Incident | None:
        try:
            return Incident.from_bytes(self.location.read(self._key(key)))
        except FileNotFoundError:
            return None

    def save(self, incident: Incident) -> None:
        self.location.put(self._key(incident.key), incident.to_bytes())

    def remove(self, key: str) -> None:
        self.location.delete(self._key(key))

    def open_incidents(self) -> list[Incident]:
        out = []
        for obj in self.location.list(f"{INCIDENTS}/"):
            try:
                inc = Incident.from_bytes(self.location.read(obj.key))
            except FileNotFoundError:  # resolved meanwhile
                continue
            if inc is not None:
                out.append(inc)
        return sorted(out, key=lambda i: i.opened_at)


def _tell(
    store: IncidentStore, incident: Incident, now: datetime, timing: Timing, send: Send
) -> Incident:
    """Send to each due audience, recording it; stops if the incident was resolved meanwhile
    (a scenario may end while the escalation check runs) and then saves nothing."""
    told = incident
    for audience, why in due(incident, now, timing):
        if store.get(incident.key) is None:
            return incident
        if send(audience, *message(told, audience, why, now)):
            told = replace(told, told={**told.told, audience: now})
            store.save(told)  # at once: a crash later must not repeat this message
    return told


def open_incident(
    store: IncidentStore, incident: Incident, now: datetime, timing: Timing, send: Send
) -> Incident:
    """Open ``incident`` and tell who is due at once (on-call; stakeholders on data loss or a
    breach). An incident already open under the same key is returned as it is: told once."""
    existing = store.get(incident.key)
    if existing is not None:
        return existing
    store.save(incident)  # first: a crash while sending must not lose the incident
    return _tell(store, incident, now, timing, send)


def escalate(
    store: IncidentStore, now: datetime, timing: Timing, send: Send
) -> list[tuple[str, str]]:
    """Tell every open incident's due audiences; returns (incident name, audience) told."""
    done: list[tuple[str, str]] = []
    for incident in store.open_incidents():
        told = _tell(store, incident, now, timing, send)
        done += [(incident.name, a) for a in told.told if a not in incident.told]
    return done


def resolve(
    store: IncidentStore,
    key: str,
    outcome: str,
    now: datetime,
    send: Send,
    message_for: Callable[[Incident], tuple[str, str]] | None = None,
) -> Incident | None:
    """Announce the resolution to everyone who was told, then close the incident. Returns it,
    or None when no incident is open under ``key``."""
    incident = store.get(key)
    if incident is None:
        return None
    subject, body = (message_for or (lambda i: resolution_message(i, outcome, now)))(incident)
    for audience in _in_order(incident.told):
        send(audience, subject, body)
    store.remove(key)
    return incident


def _in_order(audiences: Sequence[str] | dict[str, datetime]) -> list[str]:
    return [a for a in AUDIENCES if a in audiences] + [a for a in audiences if a not in AUDIENCES]
