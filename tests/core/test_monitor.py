"""Alert rules are tables: facts and ``now`` in, alerts out; an alert fires once per incident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.core.catalog import BackupEntry, Catalog
from tasks.core.comms import IncidentStore, Timing
from tasks.core.config import MonitoringConfig, Objectives, load_config
from tasks.core.history import Record
from tasks.core.monitor import (
    Alert,
    Target,
    backup_runs_failed,
    backup_stale,
    evaluate,
    gather,
    objective_missed,
    reconcile,
    size_anomaly,
    wal_stale,
)
from tasks.core.status import environment_status
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.memory import MemoryStorage
from tests.core.fake_backups import put_backup

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def run(ok: bool, hours_ago: float, target: str = "main", kind: str = "backup") -> Record:
    t = NOW - hours_ago * HOUR
    return Record(kind, "prod", target, t, t + HOUR / 60, ok, "" if ok else "pg_dump: timeout")  # type: ignore[arg-type]


def backups(specs: list[tuple[float, int, bool | None]], db: str = "app") -> list[BackupEntry]:
    """(hours ago, size, verified ok) -> catalog entries, newest first."""
    loc = MemoryStorage()
    for hours_ago, size, verified in specs:
        put_backup([loc], db, NOW - hours_ago * HOUR, size=size, verified=verified)
    return Catalog([loc]).list().backups


@pytest.mark.parametrize(
    ("runs", "fires"),
    [
        pytest.param([run(True, 1)], False, id="ok"),
        pytest.param([run(False, 1)], False, id="one-failure"),
        pytest.param([run(False, 1), run(False, 25)], True, id="two-in-a-row"),
        pytest.param([run(False, 1), run(True, 25), run(False, 49)], False, id="not-in-a-row"),
        pytest.param([run(True, 1), run(False, 25), run(False, 49)], False, id="recovered"),
        pytest.param([run(False, 1, "other"), run(False, 25, "other")], False, id="other-target"),
        pytest.param(
            [run(False, 1), run(True, 2, kind="verification"), run(False, 25)],
            True,
            id="other-kinds-ignored",
        ),
    ],
)
def test_two_failed_backup_runs_in_a_row(runs: list[Record], fires: bool) -> None:
    alert = backup_runs_failed(runs, "main")
    assert (alert is not None) == fires
    if alert:
        assert alert.summary == ("the last 2 backup runs of main failed; last: pg_dump: timeout")


BASE = [(h, 1000, None) for h in (24, 48, 72, 96, 120, 144, 168)]


@pytest.mark.parametrize(
    ("specs", "change"),
    [
        pytest.param([(1, 1000, None), *BASE], None, id="steady"),
        pytest.param([(1, 1190, None), *BASE], None, id="plus-19-pct"),
        pytest.param([(1, 1250, None), *BASE], "+25 %", id="plus-25-pct"),
        pytest.param([(1, 700, None), *BASE], "-30 %", id="minus-30-pct"),
        pytest.param([(1, 5000, None), *BASE[:2]], None, id="too-few-for-a-baseline"),
        pytest.param(
            [(1, 5000, False), (2, 1000, None), *BASE], None, id="a-bad-backup-is-not-compared"
        ),
        pytest.param(
            [(1, 1000, None), *BASE[:6], (168, 1_000_000, None), (192, 1_000_000, None)],
            None,
            id="median-of-previous-7-only",
        ),
    ],
)
def test_size_differs_from_the_median_of_the_previous_seven(
    specs: list[tuple[float, int, bool | None]], change: str | None
) -> None:
    alert = size_anomaly(backups(specs), "main")
    if change is None:
        assert alert is None
    else:
        assert alert is not None
        assert f"{change} from the median 1000 B of the previous 7" in alert.summary


@pytest.mark.parametrize(
    ("specs", "summary"),
    [
        pytest.param([(25, 100, None)], None, id="25h-ok"),
        pytest.param([(27, 100, None)], "is 27.0 h old (limit 26 h)", id="27h-stale"),
        pytest.param([], "no good backup of main at all", id="no-backup"),
        pytest.param(
            [(1, 100, False), (30, 100, True)], "is 30.0 h old", id="newest-is-bad-older-is-stale"
        ),
        pytest.param([(-5, 100, None)], "no good backup of main at all", id="only-future"),
    ],
)
def test_newest_good_backup_older_than_26_hours(
    specs: list[tuple[float, int, bool | None]], summary: str | None
) -> None:
    alert = backup_stale(backups(specs), "main", NOW, 26 * HOUR)
    if summary is None:
        assert alert is None
    else:
        assert alert is not None
        assert summary in alert.summary


def measured(kind: str, rto_min: float | None, rpo_min: float | None) -> Record:
    return Record(
        kind,  # type: ignore[arg-type]
        "prod",
        "database-corruption" if kind == "drill" else "main",
        NOW - 24 * HOUR,
        NOW - 23 * HOUR,
        True,
        rto_s=None if rto_min is None else rto_min * 60,
        rpo_s=None if rpo_min is None else rpo_min * 60,
        rto_objective_s=3600,
        rpo_objective_s=900,
    )


@pytest.mark.parametrize(
    ("record", "missed"),
    [
        pytest.param(measured("restore-test", 40, None), None, id="test-within-rto"),
        pytest.param(measured("restore-test", 75, None), "RTO 75.0 min > 60 min", id="test-rto"),
        pytest.param(measured("drill", 30, 5), None, id="drill-within"),
        pytest.param(measured("drill", 30, 20), "RPO 20.0 min > 15 min", id="drill-rpo"),
        pytest.param(None, None, id="never-measured"),
    ],
)
def test_last_restore_test_or_drill_missed_an_objective(
    record: Record | None, missed: str | None
) -> None:
    alert = objective_missed(record)
    assert (alert.summary.split(": ", 1)[1] if alert else None) == missed


@pytest.mark.parametrize(
    ("wal_age_s", "fires"),
    [(None, False), (600, False), (900, False), (901, True)],
)
def test_newest_archived_wal_older_than_the_rpo(wal_age_s: float | None, fires: bool) -> None:
    assert (wal_stale(wal_age_s, 900, "main") is not None) == fires


def test_evaluate_runs_every_rule_for_every_target() -> None:
    entries = backups([(30, 100, None)], db="app") + backups([(2, 100, None)], db="other")
    alerts = evaluate(
        [Target("main", "app"), Target("second", "other")],
        entries,
        [run(False, 1), run(False, 25), measured("drill", 90, 5)],
        NOW,
        MonitoringConfig(),
        Objectives(),
        wal_age_s={"second": 3600},
    )
    assert sorted(a.key for a in alerts) == [
        "alert:backup-failing:main",
        "alert:backup-stale:main",
        "alert:objective-missed:drill database-corruption",
        "alert:wal-stale:second",
    ]


def test_redis_is_monitored_like_a_database(tmp_path: Path) -> None:
    """[redis] is a target: its snapshots go stale and its runs fail like a database's, and a
    PostgreSQL database called like the Redis target does not stand in for its snapshots."""
    cfg_file = tmp_path / "dr.toml"
    cfg_file.write_text(
        '[storage]\nbackup_dir = "backups"\n\n'
        '[[databases]]\nname = "main"\nurl = "postgresql://app@db/cache"\n\n'
        '[redis]\nname = "cache"\nurl = "redis://127.0.0.1:6379/0"\n'
    )
    cfg = load_config(cfg_file)
    loc = LocalStorage(cfg.storage.backup_dir)
    put_backup([loc], "cache", NOW - 2 * HOUR)  # a fresh PostgreSQL backup of database cache
    put_backup([loc], "cache", NOW - 30 * HOUR, engine="redis")  # a day-old snapshot
    facts = gather(cfg)
    assert Target("cache", "cache", "redis") in facts.targets
    history = [run(False, 1, "cache"), run(False, 25, "cache")]
    alerts = evaluate(
        [t for t in facts.targets if t.engine == "redis"],
        facts.backups,
        history,
        NOW,
        MonitoringConfig(),
        Objectives(),
    )
    assert sorted(a.key for a in alerts) == [
        "alert:backup-failing:cache",
        "alert:backup-stale:cache",
    ]
    stale = next(a for a in alerts if a.rule == "backup-stale")
    assert "30.0 h old" in stale.summary
    # dr status has a row for it too, with its own newest snapshot
    rows = {st.database: st for st in environment_status(cfg, NOW)}
    assert rows["cache"].last_backup is not None
    assert rows["cache"].last_backup.manifest.engine == "redis"
    assert rows["main"].last_backup is not None
    assert rows["main"].last_backup.manifest.engine == "postgresql"


def test_an_alert_fires_once_per_incident_and_resolves_when_it_clears() -> None:
    store, sent = IncidentStore(MemoryStorage()), []

    def send(audience: str, subject: str, body: str) -> bool:
        sent.append((audience, subject))
        return True

    stale = Alert("backup-stale", "main", "the newest good backup of main is 30.0 h old")
    for hour in range(5):  # the hourly monitor keeps seeing it
        fired, resolved = reconcile(
            store, [stale], NOW + hour * HOUR, Timing(), send, environment="prod"
        )
        assert (fired, resolved) == (([stale], []) if hour == 0 else ([], []))
    assert sent == [
        ("on-call", "ALERT backup-stale main: the newest good backup of main is 30.0 h old")
    ]
    fired, resolved = reconcile(store, [], NOW + 5 * HOUR, Timing(), send, environment="prod")
    assert (fired, resolved) == ([], ["backup-stale main"])
    assert sent[-1] == ("on-call", "backup-stale main: resolved, the condition cleared")
    fired, _ = reconcile(store, [stale], NOW + 6 * HOUR, Timing(), send, environment="prod")
    assert fired == [stale]  # a new incident after the old one was resolved
