"""The communication plan: who is told when (a table over injected time), told once, and
resolution announced to everyone who was told."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tasks.core.comms import (
    Incident,
    IncidentStore,
    Timing,
    due,
    escalate,
    message,
    open_incident,
    resolve,
)
from tasks.core.config import CommunicationConfig
from tasks.core.storage.memory import MemoryStorage

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
TIMING = Timing()  # the runbook's: 15 / 30 / 60 min, checked every 5 min


def scenario(**kw: object) -> Incident:
    base = Incident(
        key="scenario:database-corruption:run-1",
        name="database-corruption",
        title="database-corruption started",
        environment="prod",
        opened_at=T0,
        what_happened="database main is corrupted",
        being_done="restoring the newest verified backup",
        rto_objective_s=3600,
        downtime_since=T0,
        run_url="http://prefect.example/flow-runs/flow-run/run-1",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("minutes", "incident", "told", "expected"),
    [
        pytest.param(0, scenario(), set(), ["on-call"], id="start-on-call-at-once"),
        pytest.param(9, scenario(), {"on-call"}, [], id="9-min-nobody-new"),
        # the last 5-minute check before the 15-minute deadline tells engineering
        pytest.param(10, scenario(), {"on-call"}, ["engineering"], id="10-min-engineering"),
        pytest.param(16, scenario(), {"on-call"}, ["engineering"], id="late-check-still-tells"),
        pytest.param(24, scenario(), {"on-call", "engineering"}, [], id="24-min-nobody-new"),
        pytest.param(
            25, scenario(), {"on-call", "engineering"}, ["management"], id="25-min-management"
        ),
        pytest.param(
            60, scenario(), {"on-call", "engineering", "management"}, [], id="60-min-not-exceeded"
        ),
        pytest.param(
            61,
            scenario(),
            {"on-call", "engineering", "management"},
            ["users"],
            id="downtime-over-1h-users",
        ),
        pytest.param(
            90,
            scenario(downtime_since=None),
            {"on-call", "engineering", "management"},
            [],
            id="no-downtime-no-users",
        ),
        pytest.param(
            0,
            scenario(breach=True),
            set(),
            ["on-call", "stakeholders"],
            id="breach-stakeholders-at-once",
        ),
        pytest.param(
            0, scenario(data_loss=True), {"on-call"}, ["stakeholders"], id="data-loss-stakeholders"
        ),
        pytest.param(
            31,
            scenario(),
            set(),
            ["on-call", "engineering", "management"],
            id="first-check-late-tells-all-due",
        ),
    ],
)
def test_who_is_told_when(
    minutes: int, incident: Incident, told: set[str], expected: list[str]
) -> None:
    incident = replace(incident, told=dict.fromkeys(told, T0))
    assert [a for a, _ in due(incident, T0 + minutes * MIN, TIMING)] == expected


def test_timing_comes_from_the_config() -> None:
    t = Timing.from_config(CommunicationConfig(engineering_after_minutes=5, check_every_minutes=1))
    assert t.engineering_after == 5 * MIN
    assert t.check_every == MIN
    assert t.management_after == 30 * MIN
    assert Timing.from_config(CommunicationConfig()) == TIMING


class Outbox:
    """A send() that records every message; ``down`` audiences fail (to be retried)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.down: set[str] = set()

    def __call__(self, audience: str, subject: str, body: str) -> bool:
        if audience in self.down:
            return False
        self.sent.append((audience, subject, body))
        return True

    def audiences(self) -> list[str]:
        return [a for a, _, _ in self.sent]


def test_an_incident_is_escalated_on_time_once_and_resolved_to_all_told() -> None:
    store, out = IncidentStore(MemoryStorage()), Outbox()
    open_incident(store, scenario(), T0, TIMING, out)
    open_incident(store, scenario(), T0 + MIN, TIMING, out)  # opened again: told once
    assert out.audiences() == ["on-call"]
    for minute in range(0, 70, 5):  # the escalation deployment, every 5 minutes
        escalate(store, T0 + minute * MIN, TIMING, out)
    assert out.audiences() == ["on-call", "engineering", "management", "users"]
    assert [s for a, s, _ in out.sent][1:] == [
        "database-corruption started (unresolved after 10 min)",
        "database-corruption started (unresolved after 25 min)",
        "database-corruption started (downtime exceeds 60 min)",
    ]
    out.sent.clear()
    closed = resolve(store, scenario().key, "recovered", T0 + 70 * MIN, out)
    assert closed is not None
    assert out.audiences() == ["on-call", "engineering", "management", "users"]
    assert {s for _, s, _ in out.sent} == {"database-corruption: recovered"}
    assert store.open_incidents() == []
    out.sent.clear()
    escalate(store, T0 + 100 * MIN, TIMING, out)  # resolved: nobody hears of it again
    assert resolve(store, scenario().key, "recovered", T0 + 100 * MIN, out) is None
    assert out.sent == []


def test_an_unreachable_audience_is_retried_without_repeating_the_others() -> None:
    store, out = IncidentStore(MemoryStorage()), Outbox()
    out.down = {"stakeholders"}
    open_incident(store, scenario(breach=True), T0, TIMING, out)
    assert out.audiences() == ["on-call"]
    out.down = set()
    escalate(store, T0 + MIN, TIMING, out)
    escalate(store, T0 + 2 * MIN, TIMING, out)
    assert out.audiences() == ["on-call", "stakeholders"]


def test_the_message_says_what_happened_what_is_done_the_rto_clock_and_the_run() -> None:
    incident = replace(
        scenario(what_happened="restore from postgresql://app:s3cret@db/main failed"),
        told={"on-call": T0},
    )
    subject, body = message(incident, "engineering", "unresolved after 12 min", T0 + 12 * MIN)
    assert subject == "database-corruption started (unresolved after 12 min)"
    assert "What is being done: restoring the newest verified backup" in body
    assert "RTO clock: 12 min since the start, objective 60 min (48 min left)" in body
    assert "Flow run: http://prefect.example/flow-runs/flow-run/run-1" in body
    assert "Already told: on-call" in body
    assert "s3cret" not in body  # secrets never reach a message
    _, late = message(incident, "management", "x", T0 + 75 * MIN)
    assert "objective 60 min (MISSED)" in late


def test_incidents_survive_a_round_trip_through_the_store() -> None:
    store = IncidentStore(MemoryStorage())
    incident = scenario(told={"on-call": T0}, breach=True)
    store.save(incident)
    assert store.get(incident.key) == incident
    assert store.open_incidents() == [incident]
