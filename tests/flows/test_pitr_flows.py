"""pgBackRest in the flows and the `dr` command: the data-loss scenario recovers to just before
the deletion, database corruption takes the physical path, the nightly backup takes a physical
backup, the daily verification alerts on a WAL gap; `dr pitr setup`, `dr backup --physical`,
`dr restore --list` and `dr restore --target-time` as a user runs them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.backup_verification import backup_verification
from flows.data_loss import data_loss
from flows.database_corruption import database_corruption
from flows.nightly_backup import nightly_backup
from tasks.core.pitr import backup_physical, open_pitr
from tests import pitr_fixtures
from tests.conftest import run_dr
from tests.flows.conftest import artifacts
from tests.pitr_fixtures import PitrEnv


@pytest.fixture
def env(prefect_api: None) -> Iterator[PitrEnv]:
    e = pitr_fixtures.make_pitr_env()
    yield e
    pitr_fixtures.cleanup(e)


def test_data_loss_recovers_to_just_before_the_deletion(env: PitrEnv) -> None:
    backup_physical(env.cfg(), "full")
    env.sql("INSERT INTO items (note) SELECT 'precious' FROM generate_series(1, 10)")
    time.sleep(1)
    deleted_at = datetime.now(UTC)
    env.sql("DELETE FROM items WHERE note = 'precious'")  # the accident
    env.sql("INSERT INTO items (note) VALUES ('after the accident')")
    dry = data_loss(deleted_at=deleted_at, config=str(env.config), dry_run=True, return_state=True)
    assert dry.is_completed(), dry.message
    assert "just before" in artifacts(dry)["data-loss-plan"]
    assert env.one("SELECT count(*) FROM items WHERE note = 'precious'") == 0  # nothing changed
    state = data_loss(
        deleted_at=deleted_at,
        config=str(env.config),
        confirm=True,
        checks=[{"name": "precious rows back", "sql": PRECIOUS, "min": 10, "max": 10}],
        return_state=True,
    )
    assert state.is_completed(), state.message
    report = artifacts(state)["data-loss-report"]
    assert "point-in-time restore to just before" in report
    assert "| precious rows back | 10..10 | 10 | ✅ |" in report
    assert env.one(PRECIOUS) == 10
    assert env.one("SELECT count(*) FROM items WHERE note = 'after the accident'") == 0
    summary = state.result()
    assert summary["rpo_s"] is not None
    assert summary["rpo_s"] < 1  # recovered to the deletion itself: nothing before it lost


PRECIOUS = "SELECT count(*) FROM items WHERE note = 'precious'"


def test_database_corruption_takes_the_physical_path(env: PitrEnv) -> None:
    backup_physical(env.cfg(), "full")
    env.sql("INSERT INTO items (note) VALUES ('written before the incident')")
    state = database_corruption(config=str(env.config), confirm=True, return_state=True)
    assert state.is_completed(), state.message
    report = artifacts(state)["database-corruption-report"]
    assert "the end of the archived WAL (latest)" in report
    assert "Confirm the corruption" in report
    assert env.one("SELECT count(*) FROM items WHERE note = 'written before the incident'") == 1
    env.sql("INSERT INTO items (note) VALUES ('writable')")


def test_nightly_backup_and_verification_cover_pgbackrest(env: PitrEnv) -> None:
    state = nightly_backup(config=str(env.config), return_state=True)
    assert state.is_completed(), state.message
    rows = {r["database"]: r for r in artifacts(state)["nightly-backup"]}
    assert rows["pitr:main"]["ok"]
    assert rows["pitr:main"]["backup"].endswith("F")
    assert backup_verification(config=str(env.config), return_state=True).is_completed()
    for _ in range(3):
        env.sql("INSERT INTO items (note) VALUES ('x')")
        env.sql("SELECT pg_switch_wal()")
    tool = open_pitr(env.cfg()).tool
    tool.check()
    segs = tool.wal_files(1, tool.info().archives[0].archive_id)
    [lost] = (env.base / "repo").glob(f"archive/*/*/*/{segs[-2].segment}-*")
    os.remove(lost)
    state = backup_verification(config=str(env.config), return_state=True)
    assert state.is_failed()
    assert f"WAL gap {segs[-2].segment}" in (state.message or "")


def test_the_dr_command_end_to_end(env: PitrEnv) -> None:
    cfg = ["--config", str(env.config)]
    r = run_dr("pitr", "setup", *cfg)
    assert r.returncode == 0, r.stderr
    assert "WAL archiving works" in r.stdout
    r = run_dr("backup", "--physical", *cfg)
    assert r.returncode == 0, r.stderr
    assert "physical backup" in r.stdout
    assert "full" in r.stdout
    r = run_dr("backup", "--physical", "--type", "incr", *cfg)
    assert r.returncode == 0, r.stderr
    assert "incr" in r.stdout
    r = run_dr("restore", "--list", "--backup-dir", str(env.base / "backups"), *cfg)
    assert r.returncode == 0, r.stderr
    assert "pgbackrest-incr" in r.stdout
    assert "pgbackrest-full" in r.stdout
    assert "recoverable window:" in r.stdout
    listed = json.loads(
        run_dr("restore", "--list", "--json", "--backup-dir", str(env.base), *cfg).stdout
    )
    assert [e["kind"] for e in listed] == ["physical-incr", "physical-full"]

    env.sql("INSERT INTO items (note) VALUES ('keep me')")
    time.sleep(1)
    t = datetime.now(UTC).isoformat()
    env.sql("DELETE FROM items")
    r = run_dr("restore", "--target-time", t, *cfg)
    assert r.returncode == 2
    assert "point-in-time restore plan (nothing changed)" in r.stdout
    assert env.one("SELECT count(*) FROM items") == 0
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = run_dr("restore", "--target-time", future, "--confirm", *cfg)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert "in the future" in r.stderr
    r = run_dr("restore", "--target-time", t, "--confirm", *cfg)
    assert r.returncode == 0, r.stderr
    assert "accepts writes" in r.stdout
    assert env.one("SELECT count(*) FROM items WHERE note = 'keep me'") == 1
    r = run_dr("pitr", "verify", *cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_dr("pitr", "info", "--json", *cfg)
    assert json.loads(r.stdout)["newest_wal"]


def test_physical_flags_without_pitr_config_fail_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "dr.toml").write_text('environment = "x"\n')
    r = run_dr("restore", "--physical", "--latest", "--config", str(tmp_path / "dr.toml"))
    assert r.returncode == 2
    assert "pgBackRest is not configured" in r.stderr
    r = run_dr("backup", "--type", "incr", "--config", str(tmp_path / "dr.toml"))
    assert r.returncode == 2
    assert "--type goes with --physical" in r.stderr
