"""Retention plans are pure: a table of backups, a policy and ``now`` in, decisions out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.core import retention
from tasks.core.audit import read_audit
from tasks.core.catalog import Catalog
from tasks.core.config import RetentionConfig
from tasks.core.errors import BackupNotFound
from tasks.core.retention import (
    AgePolicy,
    Candidate,
    Decision,
    Location,
    TieredPolicy,
    Tiers,
    candidates,
    plan,
)
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.s3 import S3Storage
from tests.core.fake_backups import put_backup

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


# ---- the tiered (GFS) policy: the runbook's table ---------------------------------------------

LOCAL = Location("/srv/backups", "local")
S3 = Location("s3://bucket/prefix", "s3")


def year_of_dailies(
    last: datetime,
    *,
    skip: Callable[[datetime], bool] = lambda t: False,
    engine: str = "postgresql",
) -> list[Candidate]:
    """One backup a day at 02:00 UTC for the 366 days up to ``last``, in both locations."""
    out = []
    for i in range(366):
        t = last - i * DAY
        if not skip(t):
            out.append(
                Candidate(f"{engine}-{t:%Y%m%d}", "app", t, True, engine, locations=(LOCAL, S3))
            )
    return out


def kept(decisions: list[Decision], where: Location) -> dict[str, str]:
    return {d.backup_id: d.reason for d in decisions if d.location == where.url and d.keep}


def tally(reasons: dict[str, str]) -> dict[str, int]:
    """How many kept copies each tier accounts for (the newest, kept by its floor, is daily)."""
    out = {"daily": 0, "weekly": 0, "monthly": 0}
    for reason in reasons.values():
        tier = "daily" if reason.startswith("newest good") else reason.split()[0]
        out[tier] += 1
    return out


@pytest.mark.parametrize(
    ("now", "last", "local", "s3"),
    [
        # Monday 03:00, last nightly an hour ago. Local: 7 dailies + the Sundays 11-22, 11-15,
        # 11-08, 11-01 within 30 days. S3: 30 dailies (11-01..11-30) + 8 Sundays back to 09-06
        # within 90 days + month ends 2025-12 .. 2026-10 (11 months; November is a daily).
        pytest.param(
            datetime(2026, 11, 30, 3, tzinfo=UTC),
            datetime(2026, 11, 30, 2, tzinfo=UTC),
            {"daily": 7, "weekly": 4, "monthly": 0},
            {"daily": 30, "weekly": 8, "monthly": 11},
            id="monday-after-the-nightly",
        ),
        # Sunday 01:00, before the nightly. Local: 02-22..02-28 + Sundays 02-15, 02-08, 02-01.
        # S3: 01-30..02-28 + Sundays 12-07..01-25 + month ends 2025-03 .. 2025-12 (10).
        pytest.param(
            datetime(2026, 3, 1, 1, tzinfo=UTC),
            datetime(2026, 2, 28, 2, tzinfo=UTC),
            {"daily": 7, "weekly": 3, "monthly": 0},
            {"daily": 30, "weekly": 8, "monthly": 10},
            id="sunday-before-the-nightly",
        ),
    ],
)
def test_a_year_of_dailies_leaves_the_runbook_counts(
    now: datetime, last: datetime, local: dict[str, int], s3: dict[str, int]
) -> None:
    decisions = plan(year_of_dailies(last), TieredPolicy(), now)
    assert tally(kept(decisions, LOCAL)) == local
    assert tally(kept(decisions, S3)) == s3
    assert len(decisions) == 2 * 366  # one decision per backup and location
    assert all(d.reason for d in decisions)


def test_reasons_name_the_period_or_the_window() -> None:
    now = datetime(2026, 11, 30, 3, tzinfo=UTC)
    decisions = plan(year_of_dailies(datetime(2026, 11, 30, 2, tzinfo=UTC)), TieredPolicy(), now)
    local = {d.backup_id: d.reason for d in decisions if d.location == LOCAL.url}
    s3 = {d.backup_id: d.reason for d in decisions if d.location == S3.url}
    assert local["postgresql-20261129"] == "daily 2026-11-29 representative"
    assert local["postgresql-20261115"] == "weekly 2026-W46 representative"
    assert local["postgresql-20261114"] == (
        "older than daily window (7 d), no weekly/monthly representative"
    )
    assert local["postgresql-20261031"].startswith("older than daily window (7 d)")
    assert s3["postgresql-20261031"] == "monthly 2026-10 representative"
    assert s3["postgresql-20251231"] == "monthly 2025-12 representative"
    assert s3["postgresql-20251130"].startswith("older than daily window (30 d)")  # > 1 year


def test_a_month_with_missing_days_still_keeps_a_monthly() -> None:
    now = datetime(2026, 11, 30, 3, tzinfo=UTC)

    def outage(t: datetime) -> bool:  # no backups from 20 to 31 July
        return t.month == 7 and t.day >= 20

    decisions = plan(
        year_of_dailies(datetime(2026, 11, 30, 2, tzinfo=UTC), skip=outage), TieredPolicy(), now
    )
    assert kept(decisions, S3)["postgresql-20260719"] == "monthly 2026-07 representative"
    assert tally(kept(decisions, S3))["monthly"] == 11


def test_several_backups_a_day_keep_the_newest_of_the_day() -> None:
    now = datetime(2026, 11, 30, 20, tzinfo=UTC)
    backups = [
        Candidate(
            "morning", "app", datetime(2026, 11, 30, 8, tzinfo=UTC), True, locations=(LOCAL,)
        ),
        Candidate(
            "evening", "app", datetime(2026, 11, 30, 18, tzinfo=UTC), True, locations=(LOCAL,)
        ),
        Candidate("bad", "app", datetime(2026, 11, 30, 19, tzinfo=UTC), False, locations=(LOCAL,)),
    ]
    reasons = {d.backup_id: (d.keep, d.reason) for d in plan(backups, TieredPolicy(), now)}
    assert reasons["evening"] == (True, "newest good backup: always kept")
    assert reasons["bad"] == (True, "daily 2026-11-30 representative")
    assert reasons["morning"] == (
        False,
        "not the newest of 2026-11-30 (daily keeps one a day)",
    )


@pytest.mark.parametrize(
    ("change", "backup_id", "reason"),
    [
        pytest.param(
            {"pinned": "before the 2026 migration"},
            "postgresql-20260315",
            "pinned (before the 2026 migration)",
            id="pinned",
        ),
        pytest.param(
            {"leased": True},
            "postgresql-20260315",
            "in use by a running restore (lease)",
            id="leased",
        ),
        pytest.param(
            {"verified": True},
            "postgresql-20260315",
            "newest verified backup: always kept",
            id="newest-verified",
        ),
    ],
)
def test_floors_hold_in_every_location(
    change: dict[str, object], backup_id: str, reason: str
) -> None:
    now = datetime(2026, 11, 30, 3, tzinfo=UTC)
    backups = [
        replace(b, **change) if b.backup_id == backup_id else b  # type: ignore[arg-type]
        for b in year_of_dailies(datetime(2026, 11, 30, 2, tzinfo=UTC))
    ]
    mine = [d for d in plan(backups, TieredPolicy(), now) if d.backup_id == backup_id]
    assert [(d.location, d.keep, d.reason) for d in mine] == [
        (LOCAL.url, True, reason),
        (S3.url, True, reason),
    ]


def test_newest_good_survives_when_every_newer_backup_is_bad_and_future_backups_are_kept() -> None:
    now = datetime(2026, 11, 30, 3, tzinfo=UTC)
    backups = [
        replace(b, good=b.taken_at < datetime(2026, 1, 1, tzinfo=UTC))
        for b in year_of_dailies(datetime(2026, 11, 30, 2, tzinfo=UTC))
    ]
    backups.append(Candidate("future", "app", now + 3 * DAY, True, locations=(LOCAL, S3)))
    decisions = plan(backups, TieredPolicy(), now)
    assert kept(decisions, LOCAL)["postgresql-20251231"] == "newest good backup: always kept"
    assert kept(decisions, LOCAL)["future"] == "taken in the future (clock skew?): kept"
    assert kept(decisions, S3)["future"] == "taken in the future (clock skew?): kept"


def test_redis_backups_are_kept_seven_days_everywhere() -> None:
    now = datetime(2026, 11, 30, 3, tzinfo=UTC)
    backups = year_of_dailies(datetime(2026, 11, 30, 2, tzinfo=UTC), engine="redis")
    decisions = plan(backups, TieredPolicy(), now)
    assert tally(kept(decisions, LOCAL)) == {"daily": 7, "weekly": 0, "monthly": 0}
    assert tally(kept(decisions, S3)) == {"daily": 7, "weekly": 0, "monthly": 0}


def test_the_policy_comes_from_the_config() -> None:
    assert TieredPolicy.from_config(RetentionConfig()) == TieredPolicy()
    custom = TieredPolicy.from_config(RetentionConfig(local_daily_days=3, s3_monthly_days=0))
    assert custom.local == Tiers(3 * DAY, 30 * DAY)
    assert custom.s3 == Tiers(30 * DAY, 90 * DAY)


def test_age_policy_honours_pins_and_leases() -> None:
    backups = [
        c("new", 1),
        replace(c("pinned", 40), pinned="audit"),
        replace(c("leased", 50), leased=True),
    ]
    reasons = {d.backup_id: d.reason for d in plan(backups, AgePolicy(30 * DAY), NOW) if d.keep}
    assert reasons == {
        "new": "newest good backup: always kept",
        "pinned": "pinned (audit)",
        "leased": "in use by a running restore (lease)",
    }


# ---- pins, leases and apply against real locations -------------------------------------------


def test_apply_deletes_per_location_manifest_first_and_keeps_holds(
    tmp_path: Path, bucket: str
) -> None:
    local, s3 = LocalStorage(tmp_path / "backups"), S3Storage(bucket, "db")
    catalog = Catalog([local, s3])
    now = datetime(2026, 11, 30, 3, tzinfo=UTC)
    ids = {
        age: put_backup([local, s3], "app", now - age * DAY - timedelta(hours=1))
        for age in (0, 1, 10, 11, 40, 41, 100, 101)
    }
    # 10/11: same ISO week (W47): local keeps its representative (10) only, S3 both (dailies);
    # 40 pinned, 100 leased: kept everywhere; 41, 101: no tier keeps them anywhere
    retention.pin(catalog, ids[40][:-2], "legal hold", now)  # a unique prefix is enough
    with retention.lease(catalog.locations, ids[100], now, "test restore"):
        listing = catalog.list()
        holds = retention.read_holds(catalog.locations, now)
        decisions = plan(candidates(listing.backups, holds), TieredPolicy(), now)
        deleted = retention.apply(catalog, listing.backups, decisions, now=now)
    held = {
        loc.url: {e.backup_id for e in catalog.list().backups if loc in e.locations}
        for loc in catalog.locations
    }
    assert held[local.url] == {ids[a] for a in (0, 1, 10, 40, 100)}
    assert held[s3.url] == {ids[a] for a in (0, 1, 10, 11, 40, 100)}
    assert deleted == 5
    for gone in (ids[41], ids[101]):  # nothing of a deleted backup is left behind
        assert not [o.key for o in local.list() if o.key.startswith(gone)]
        assert not [o.key for o in s3.list() if o.key.startswith(gone)]
    assert [o.key for o in local.list(ids[11])] == []
    # holds are small objects next to the catalog, never taken for backups or leftovers
    assert catalog.sweep(now + 30 * DAY, timedelta(0)) == []
    assert retention.read_holds(catalog.locations, now).leased == frozenset()  # released
    assert retention.unpin(catalog, ids[40]) == [local.url, s3.url]
    assert retention.read_pins(catalog.locations) == {}
    # every delete (one per backup and location) is in the audit trail, in both locations
    for loc in catalog.locations:
        records = read_audit([loc])[0]
        assert sorted((r.action, r.backup_id) for r in records) == sorted(
            ("retention-delete", i) for i in (ids[11], ids[41], ids[41], ids[101], ids[101])
        )
        assert all(r.ok and r.approved_by == "retention policy (automatic)" for r in records)
        assert all(r.detail.split("; from ")[0] for r in records)


def test_a_crashed_restores_lease_ages_out(tmp_path: Path) -> None:
    loc = LocalStorage(tmp_path)
    now = datetime(2026, 11, 30, 3, tzinfo=UTC)
    retention.acquire_lease([loc], "app-x", now, "crashed restore", timedelta(hours=12))
    assert retention.read_holds([loc], now + timedelta(hours=11)).leased == {"app-x"}
    assert retention.read_holds([loc], now + timedelta(hours=13)).leased == frozenset()


def test_unpin_of_an_unpinned_backup_says_so(tmp_path: Path) -> None:
    with pytest.raises(BackupNotFound, match="no pinned backup"):
        retention.unpin(Catalog([LocalStorage(tmp_path)]), "app-nothing")


def test_a_restore_holds_a_lease_while_it_reads_the_backup(tmp_path: Path) -> None:
    import sqlite3

    from tasks.core.backup import backup_database
    from tasks.core.dburl import parse_database_url
    from tasks.core.restore import plan_restore, restore

    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    catalog = Catalog([LocalStorage(tmp_path / "backups")])
    url = parse_database_url(f"sqlite:///{db}")
    entry = catalog.get(backup_database(url, catalog).manifest.backup_id)
    seen: list[frozenset[str]] = []

    def progress(_: int) -> None:  # called while the artefact is read
        seen.append(retention.read_holds(catalog.locations, NOW).leased)

    restore(
        plan_restore(url, entry, drop_existing=True),
        confirm=True,
        progress=progress,
        now=lambda: NOW,
    )
    assert seen
    assert all(leased == {entry.backup_id} for leased in seen)
    assert retention.read_holds(catalog.locations, None).leased == frozenset()  # released


def test_the_retention_section_is_read_and_checked(tmp_path: Path) -> None:
    from tasks.core.config import Config, load_config
    from tasks.core.errors import ConfigError

    path = tmp_path / "dr.toml"
    path.write_text("[retention]\ns3_monthly_days = 730\n")
    cfg = load_config(path)
    assert cfg.retention is not None
    assert TieredPolicy.from_config(cfg.retention).s3 == Tiers(30 * DAY, 90 * DAY, 730 * DAY)
    assert Config().retention is None  # absent: the nightly flow keeps the age policy
    path.write_text("[retention]\nlocal_daily_days = -1\n")
    with pytest.raises(ConfigError, match=r"retention\.local_daily_days"):
        load_config(path)
