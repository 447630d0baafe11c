"""pgBackRest orchestration against a real cluster archiving into real repositories (a local
path; S3 = moto behind stunnel): setup, physical backups, the recoverable window, PITR by time,
LSN and to the latest state with switch-over, bad targets, failures that leave the live server
alone, verification with a WAL gap."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.core.config import CriticalQuery
from tasks.core.engines.pgbackrest import find_gaps, lsn_to_int
from tasks.core.errors import (
    CommandFailed,
    ConfigError,
    ConsentRequired,
    PermanentError,
    VerificationFailed,
)
from tasks.core.pitr import (
    Target,
    backup_physical,
    open_pitr,
    pitr_restore,
    plan_pitr,
    recoverable_window,
    setup,
    verify_repository,
)
from tests import pitr_fixtures
from tests.pitr_fixtures import PitrEnv, make_pitr_env

pitr_env = pitr_fixtures.pitr_env
stunnel_s3 = pitr_fixtures.stunnel_s3
_cleanup = pitr_fixtures.cleanup


def now() -> datetime:
    return datetime.now(UTC)


def snapshot(env: PitrEnv) -> tuple[list[str], int]:
    """What "untouched" means: the directories next to the data dir and the live row count."""
    dirs = sorted(p.name for p in env.cluster.base.iterdir())
    return dirs, int(env.one("SELECT count(*) FROM items"))  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("segments", "gaps"),
    [
        ([], []),
        (["000000010000000000000001", "000000010000000000000002"], []),
        (
            ["000000010000000000000001", "000000010000000000000004"],
            [("000000010000000000000002", "000000010000000000000003")],
        ),
        (  # across a log file boundary: ...00FF is followed by ...0100 00
            ["0000000100000000000000FF", "000000010000000100000000"],
            [],
        ),
        (  # timelines are checked separately
            ["000000010000000000000003", "000000020000000000000004"],
            [],
        ),
    ],
)
def test_find_gaps(segments: list[str], gaps: list[tuple[str, str]]) -> None:
    assert find_gaps(segments) == gaps


def test_lsn_parsing() -> None:
    assert lsn_to_int("0/3000050") == 0x3000050
    assert lsn_to_int("1/0") == 1 << 32
    with pytest.raises(ConfigError, match="not an LSN"):
        lsn_to_int("yesterday")


def test_setup_is_idempotent_and_keeps_the_secrets_private(pitr_env: PitrEnv) -> None:
    cfg = pitr_env.cfg()
    result = setup(cfg)  # the fixture ran it once already
    assert result.checked
    assert result.applied
    assert not result.restart_needed
    assert pitr_env.one("SHOW archive_command", "postgres") == result.archive_command
    assert pitr_env.one("SHOW archive_timeout", "postgres") == "1min"
    conf = result.config_file
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert "compress-type=zst" in text
    assert "repo1-retention-full-type=time" in text
    assert "repo1-retention-full=7" in text


def test_physical_backups_and_the_recoverable_window(pitr_env: PitrEnv) -> None:
    cfg = pitr_env.cfg()
    full = backup_physical(cfg, "full")
    pitr_env.sql("INSERT INTO items (note) VALUES ('after full')")
    incr = backup_physical(cfg, "incr")
    assert [b.type for b in full.backups] == ["full"]
    assert [b.type for b in incr.backups] == ["incr"]
    assert incr.backups[0].prior == full.backups[0].label
    w = recoverable_window(cfg, now(), flush=True)
    assert [b.label for b in w.backups] == [full.backups[0].label, incr.backups[0].label]
    assert w.earliest == full.backups[0].stopped_at + timedelta(seconds=1)
    assert w.latest is not None
    assert w.earliest <= w.latest
    assert w.newest_wal_age_s is not None
    assert w.newest_wal_age_s < 60
    assert "recoverable window:" in w.describe()


PRECIOUS = "SELECT count(*) FROM items WHERE note = 'precious'"


def test_pitr_by_time_brings_back_deleted_rows_and_drops_later_writes(
    pitr_env: PitrEnv,
) -> None:
    env = pitr_env
    cfg = env.cfg()
    backup_physical(cfg, "full")
    env.sql("INSERT INTO items (note) SELECT 'precious' FROM generate_series(1, 25)")
    time.sleep(1)
    t = now()
    time.sleep(1)
    env.sql("DELETE FROM items WHERE note = 'precious'")
    env.sql("INSERT INTO items (note) VALUES ('after the deletion')")
    plan = plan_pitr(cfg, Target("time", time=t), now())
    with pytest.raises(ConsentRequired):
        pitr_restore(cfg, plan, confirm=False)
    assert not plan.new_dir.exists()
    result = pitr_restore(
        cfg,
        plan,
        confirm=True,
        extra_checks=[
            CriticalQuery(
                name="precious rows",
                sql="SELECT count(*) FROM items WHERE note = 'precious'",
                min=25,
                max=25,
            )
        ],
    )
    assert env.one("SELECT count(*) FROM items WHERE note = 'precious'") == 25
    assert env.one("SELECT count(*) FROM items WHERE note = 'after the deletion'") == 0
    assert result.counts["main"]["public.items"] == 125
    assert all(c.ok for c in result.checks)
    assert result.kept_as.exists()
    assert (result.kept_as / "PG_VERSION").exists()
    assert not plan.new_dir.exists()
    env.sql("INSERT INTO items (note) VALUES ('writable')")  # promoted: accepts writes
    assert result.reached is not None
    assert result.reached <= t
    print(
        f"restore {result.restore_s:.1f}s, recovery {result.recover_s:.1f}s, "
        f"restore start -> accepts writes {result.writable_s:.1f}s"
    )


def test_pitr_by_lsn(pitr_env: PitrEnv) -> None:
    env = pitr_env
    cfg = env.cfg()
    backup_physical(cfg, "full")
    env.sql("INSERT INTO items (note) VALUES ('kept')")
    lsn = str(env.one("SELECT pg_current_wal_insert_lsn()::text"))
    env.sql("DELETE FROM items")
    plan = plan_pitr(cfg, Target("lsn", lsn=lsn), now())
    pitr_restore(cfg, plan, confirm=True)
    assert env.one("SELECT count(*) FROM items") == 101
    # by transaction id, on the new timeline, from the same backup
    [(xid,)] = env.sql(
        "WITH i AS (INSERT INTO items (note) VALUES ('by xid')) SELECT txid_current()::text"
    )
    env.sql("DELETE FROM items")
    pitr_restore(cfg, plan_pitr(cfg, Target("xid", xid=str(xid)), now()), confirm=True)
    assert env.one("SELECT count(*) FROM items") == 102


def test_bad_targets_fail_in_one_line_before_anything_changes(pitr_env: PitrEnv) -> None:
    env = pitr_env
    cfg = env.cfg()
    with pytest.raises(ConfigError, match="no physical backup"):
        plan_pitr(cfg, Target("time", time=now() - timedelta(seconds=5)), now())
    backup_physical(cfg, "full")
    before = snapshot(env)
    cases = {
        "in the future": Target("time", time=now() + timedelta(hours=1)),
        "before the earliest backup": Target("time", time=now() - timedelta(hours=1)),
        "past the end of the archived WAL": Target("lsn", lsn="FF/0"),
    }
    for message, target in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            plan_pitr(cfg, target, now())
        assert "\n" not in str(info.value)
    # the server is down (nothing can flush its WAL): a recent time is past the archived WAL
    env.sql("INSERT INTO items (note) VALUES ('unarchived')")
    env.cluster.stop()
    time.sleep(2.5)
    with pytest.raises(ConfigError, match="past the end of the archived WAL"):
        plan_pitr(cfg, Target("time", time=now() - timedelta(seconds=0.5)), now())
    env.cluster.start()
    assert snapshot(env) == (before[0], before[1] + 1)


def test_failed_restores_leave_the_live_server_running_and_untouched(pitr_env: PitrEnv) -> None:
    env = pitr_env
    cfg = env.cfg()
    backup_physical(cfg, "full")
    time.sleep(1.5)  # pgBackRest compares times in whole seconds
    env.sql("INSERT INTO items (note) VALUES ('live')")
    before = snapshot(env)
    failing = CriticalQuery(name="impossible", sql="SELECT 0", min=1)
    plan = plan_pitr(cfg, Target("time", time=now() - timedelta(seconds=0.2)), now())
    with pytest.raises(VerificationFailed, match=r"impossible.*live server was not touched"):
        pitr_restore(cfg, plan, confirm=True, extra_checks=[failing])
    assert snapshot(env) == before
    # a transaction id recovery never reaches: the copy stops short, nothing is switched
    plan = plan_pitr(cfg, Target("xid", xid="99999999"), now())
    with pytest.raises(CommandFailed, match="recovery"):
        pitr_restore(cfg, plan, confirm=True)
    assert snapshot(env) == before
    env.sql("INSERT INTO items (note) VALUES ('still writable')")


def test_restore_latest_after_a_crash_loses_at_most_the_archive_timeout() -> None:
    """RPO: the server dies; what is not archived yet is lost, and archive_timeout bounds it."""
    timeout_s = 5  # the property holds for any value; 60 s in production, 5 s here for speed
    env = make_pitr_env(archive_timeout_s=timeout_s)
    try:
        cfg = env.cfg()
        backup_physical(cfg, "full")
        end = time.monotonic() + 3 * timeout_s
        while time.monotonic() < end:
            env.sql("INSERT INTO items (note, at) VALUES ('tick', clock_timestamp())")
            time.sleep(0.25)
        last_written = env.one("SELECT max(at) FROM items")
        env.cluster._run("pg_ctl", "-D", str(env.cluster.data), "-m", "immediate", "stop")
        plan = plan_pitr(cfg, Target("latest"), now())
        assert not plan.server_running
        assert plan.window.flushed
        result = pitr_restore(cfg, plan, confirm=True)
        last_restored = env.one("SELECT max(at) FROM items")
        assert isinstance(last_written, datetime)
        assert isinstance(last_restored, datetime)
        loss = (last_written - last_restored).total_seconds()
        print(
            f"RPO measured: {loss:.1f}s of writes lost (archive_timeout {timeout_s}s); "
            f"restore start -> accepts writes {result.writable_s:.1f}s"
        )
        assert 0 <= loss <= timeout_s + 3  # + the archive delay (archive-push of a segment)
        env.sql("INSERT INTO items (note) VALUES ('writable')")
    finally:
        _cleanup(env)


def test_verify_reports_a_wal_gap(pitr_env: PitrEnv) -> None:
    env = pitr_env
    cfg = env.cfg()
    backup_physical(cfg, "full")
    tool = open_pitr(cfg).tool
    for _ in range(3):
        env.sql("INSERT INTO items (note) VALUES ('x')")
        env.sql("SELECT pg_switch_wal()")
    tool.check()
    outcome = verify_repository(cfg)
    assert outcome.ok
    assert not outcome.gaps
    assert any("status: ok" in line for line in outcome.lines)
    info = tool.info()
    segs = tool.wal_files(1, info.archives[0].archive_id)
    victim = segs[-2].segment
    repo = Path(cfg.pitr.repo_path)  # type: ignore[union-attr, arg-type]
    [f] = list(repo.glob(f"archive/*/*/*/{victim}-*"))
    os.remove(f)
    outcome = verify_repository(cfg)
    assert not outcome.ok
    assert outcome.gaps == (f"{victim}..{victim} (repo1)",)


def test_s3_repository_through_tls(stunnel_s3: tuple[str, int], bucket: str) -> None:
    env = make_pitr_env(s3=stunnel_s3, bucket=bucket, local_repo=False)
    try:
        cfg = env.cfg()
        conf = open_pitr(cfg).tool.conf
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        assert "testing" not in str(env.one("SHOW archive_command", "postgres"))
        [b] = backup_physical(cfg, "full").backups
        assert b.repo == 1
        env.sql("INSERT INTO items (note) VALUES ('in s3')")
        time.sleep(1)
        t = now()
        env.sql("DELETE FROM items")
        pitr_restore(cfg, plan_pitr(cfg, Target("time", time=t), now()), confirm=True)
        assert env.one("SELECT count(*) FROM items WHERE note = 'in s3'") == 1
    finally:
        _cleanup(env)


def test_a_failed_switch_over_puts_the_previous_server_back(pitr_env: PitrEnv) -> None:
    env = pitr_env
    cfg = env.cfg()
    backup_physical(cfg, "full")
    time.sleep(1.5)  # pgBackRest compares times in whole seconds
    env.sql("INSERT INTO items (note) VALUES ('live')")
    plan = plan_pitr(cfg, Target("time", time=now() - timedelta(seconds=0.2)), now())

    def break_the_copy(message: str) -> None:
        # the verified copy will not start in place: the switch-over must undo itself
        if message == "switching over":
            with open(plan.new_dir / "postgresql.auto.conf", "a") as f:
                f.write("shared_buffers = 'nonsense'\n")

    with pytest.raises(PermanentError, match="previous server is live again") as info:
        pitr_restore(cfg, plan, confirm=True, say=break_the_copy)
    assert "failed-pitr" in str(info.value)
    assert env.one("SELECT count(*) FROM items WHERE note = 'live'") == 1
    env.sql("INSERT INTO items (note) VALUES ('still writable')")
    assert not plan.aside_dir.exists()


def test_setup_without_alter_system_prints_the_lines_and_changes_nothing(
    pitr_env: PitrEnv,
) -> None:
    before = pitr_env.one("SHOW archive_command", "postgres")
    text = pitr_env.config.read_text().replace("[pitr]\n", '[pitr]\nstanza = "other"\n')
    pitr_env.config.write_text(text + "alter_system = false\n")
    result = setup(pitr_env.cfg())
    assert not result.applied
    assert not result.checked
    assert "archive_command = 'pgbackrest" in "\n".join(result.manual_lines)
    assert "--stanza=other archive-push %p'" in "\n".join(result.manual_lines)
    assert pitr_env.one("SHOW archive_command", "postgres") == before


def test_a_recent_time_on_an_idle_server_is_reachable(pitr_env: PitrEnv) -> None:
    """Recovery to a time stops at the first commit after it: dr provides one when none came."""
    env = pitr_env
    cfg = env.cfg()
    backup_physical(cfg, "full")
    env.sql("INSERT INTO items (note) VALUES ('last write')")
    time.sleep(1.5)  # idle: nothing commits after the target
    plan = plan_pitr(cfg, Target("time", time=now() - timedelta(seconds=0.5)), now())
    pitr_restore(cfg, plan, confirm=True)
    assert env.one("SELECT count(*) FROM items WHERE note = 'last write'") == 1
