"""Retention plans are pure: a table of backups, a policy and ``now`` in, decisions out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.core.retention import AgePolicy, Candidate, plan

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def c(bid: str, age_days: float, good: bool = True, db: str = "app") -> Candidate:
    return Candidate(bid, db, NOW - age_days * DAY, good)


@pytest.mark.parametrize(
    ("backups", "kept"),
    [
        pytest.param(
            [c("a", 1), c("b", 29), c("c", 31), c("d", 90)],
            {"a", "b"},
            id="older-than-30-days-deleted",
        ),
        pytest.param([c("old", 40), c("older", 50)], {"old"}, id="newest-good-kept-however-old"),
        pytest.param(
            [c("bad-new", 1, good=False), c("good-old", 45), c("older", 60)],
            {"bad-new", "good-old"},
            id="newest-good-not-newest-bad",
        ),
        pytest.param(
            [c("x", 45, db="app"), c("y", 45, db="other")], {"x", "y"}, id="floor-is-per-database"
        ),
        pytest.param(
            [c("future", -3), c("old", 40), c("mid", 5)],
            {"future", "mid"},
            id="backup-from-the-future-kept",
        ),
        pytest.param(
            [c("future", -3), c("old", 40)],
            {"future", "old"},
            id="future-backup-does-not-count-as-newest-good",
        ),
        pytest.param([], set(), id="empty"),
    ],
)
def test_age_policy(backups: list[Candidate], kept: set[str]) -> None:
    decisions = plan(backups, AgePolicy(30 * DAY), NOW)
    assert {d.backup_id for d in decisions if d.keep} == kept
    assert {d.backup_id for d in decisions} == {b.backup_id for b in backups}
    assert all(d.reason for d in decisions)


def test_reasons_say_why() -> None:
    reasons = {
        d.backup_id: d.reason
        for d in plan([c("a", 1), c("b", 40), c("z", 50)], AgePolicy(30 * DAY), NOW)
    }
    assert reasons == {
        "a": "newest good backup: always kept",
        "b": "older than 30 days",
        "z": "older than 30 days",
    }
