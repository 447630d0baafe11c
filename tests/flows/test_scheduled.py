"""The scheduled flows against real PostgreSQL and moto S3: nightly backup, daily verification,
weekly restore test (with its scratch target torn down), drills that prove the objectives."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.backup_verification import backup_verification
from flows.dr_drill import DrillScenario, dr_drill, rebuild_drill
from flows.nightly_backup import nightly_backup
from flows.restore_test import restore_test
from tasks.core.config import load_config
from tasks.core.environment import build_catalog
from tasks.core.history import read_history
from tests.flows.conftest import AppEnv, artifacts

pytestmark = pytest.mark.timeout(300)


def _history(env: AppEnv, kind: str) -> list:
    return read_history(build_catalog(load_config(env.config)).locations, kind)  # type: ignore[arg-type]


def test_nightly_backup_backs_up_and_verifies_every_database(app_env: AppEnv) -> None:
    sqlite_db = app_env.tmp / "analytics.db"
    from tasks.core.sampledata import create_sqlite_app_db

    create_sqlite_app_db(sqlite_db, users=5)
    app_env.write_config(
        database=(
            f'[[databases]]\nname = "main"\nurl = "{app_env.url}"\n'
            f'[[databases]]\nname = "analytics"\nurl = "sqlite:///{sqlite_db}"\n'
        )
    )
    state = nightly_backup(config=str(app_env.config), return_state=True)
    assert state.is_completed(), state.message
    rows = artifacts(state)["nightly-backup"]
    assert [(r["database"], r["ok"]) for r in rows] == [("main", True), ("analytics", True)]
    assert all("checksums verified" in r["detail"] for r in rows)
    catalog = build_catalog(load_config(app_env.config))
    listed = catalog.list().backups
    assert sorted(e.manifest.database for e in listed) == ["analytics.db", app_env.dbname]
    assert all(e.location_names() == ["local", "s3"] for e in listed)
    records = _history(app_env, "backup")
    assert sorted(r.target for r in records) == ["analytics", "main"]
    assert all(r.ok and r.extra["size"] > 0 for r in records)


def test_nightly_backup_failure_is_recorded_and_notified_the_rest_goes_on(
    app_env: AppEnv,
) -> None:
    app_env.write_config(
        database=(
            '[[databases]]\nname = "gone"\nurl = "postgresql://nobody@127.0.0.1:1/gone"\n'
            f'[[databases]]\nname = "main"\nurl = "{app_env.url}"\n'
        )
    )
    state = nightly_backup(config=str(app_env.config), return_state=True)
    assert state.is_failed()
    assert "gone: cannot connect to postgresql://nobody@127.0.0.1:1/gone" in state.message
    by_target = {r.target: r.ok for r in _history(app_env, "backup")}
    assert by_target == {"gone": False, "main": True}
    assert any("nightly-backup failed" in s for s in app_env.webhook.subjects())


def test_backup_verification_catches_a_damaged_copy(app_env: AppEnv) -> None:
    backup_id = app_env.backup()
    assert backup_verification(config=str(app_env.config), return_state=True).is_completed()
    artefact = next(Path(app_env.tmp, "backups", backup_id).glob("*.zst"))
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0x40
    artefact.write_bytes(bytes(data))
    state = backup_verification(config=str(app_env.config), return_state=True)
    assert state.is_failed()
    rows = artifacts(state)["backup-verification"]
    status = {r["location"].split(":")[0]: r["status"] for r in rows}
    assert status == {str(Path(app_env.tmp, "backups")): "CHECKSUM_MISMATCH", "s3": "OK"}
    assert [r.ok for r in _history(app_env, "verification")] == [False, True]


def _scratch_databases(env: AppEnv) -> str:
    return env.sql(f"SELECT count(*) FROM pg_database WHERE datname LIKE '{env.dbname}_dr_test%'")


def test_restore_test_passes_on_a_good_backup_and_leaves_nothing(app_env: AppEnv) -> None:
    backup_id = app_env.backup()
    state = restore_test(config=str(app_env.config), return_state=True)
    assert state.is_completed(), state.message
    evidence = artifacts(state)["restore-test-evidence"]
    assert evidence.startswith("# restore test PASSED")
    assert backup_id in evidence
    assert (
        "| foreign key trades_bot_id_fkey (public.trades -> public.bots) | 0 orphans | "
        "0 orphans | ✅ |" in evidence
    )
    assert "(torn down: yes)" in evidence
    assert _scratch_databases(app_env) == "0"
    [rec] = _history(app_env, "restore-test")
    assert rec.ok
    assert rec.rto_s is not None
    assert rec.rto_s < rec.rto_objective_s  # type: ignore[operator]


def test_restore_test_fails_precisely_on_broken_data_and_still_tears_down(
    app_env: AppEnv,
) -> None:
    # orphans hidden behind a NOT VALID constraint: restorable, but not consistent
    app_env.sql(
        "ALTER TABLE trades DROP CONSTRAINT trades_bot_id_fkey;"
        "INSERT INTO trades VALUES (900001, 999999, 'BTC-USD', 'buy', 1, 1, 'x'),"
        " (900002, 999998, 'BTC-USD', 'buy', 1, 1, 'x');"
        "ALTER TABLE trades ADD CONSTRAINT trades_bot_id_fkey FOREIGN KEY (bot_id) "
        "REFERENCES bots(id) NOT VALID"
    )
    app_env.write_config(
        database=(
            f'[[databases]]\nname = "main"\nurl = "{app_env.url}"\n'
            '[[databases.critical_queries]]\nname = "no test trades"\n'
            "sql = \"SELECT count(*) FROM trades WHERE created_at = 'x'\"\nmin = 0\nmax = 0\n"
        )
    )
    app_env.backup()
    state = restore_test(config=str(app_env.config), return_state=True)
    assert state.is_failed()
    assert (
        "foreign key trades_bot_id_fkey (public.trades -> public.bots): expected 0 "
        "orphans, got 2 orphans" in state.message
    )
    assert "no test trades: expected 0..0, got 2" in state.message
    evidence = artifacts(state)["restore-test-evidence"]
    assert evidence.startswith("# restore test FAILED")
    assert _scratch_databases(app_env) == "0"
    assert [r.ok for r in _history(app_env, "restore-test")] == [False]
    assert any("restore-test failed" in s for s in app_env.webhook.subjects())


def test_dr_drill_proves_the_objectives(app_env: AppEnv) -> None:
    app_env.backup()
    state = dr_drill(
        config=str(app_env.config), scenario=DrillScenario.database_corruption, return_state=True
    )
    assert state.is_completed(), state.message
    [rec] = _history(app_env, "drill")
    assert rec.ok
    assert rec.target == "database-corruption"
    assert rec.rto_met is True
    assert rec.rpo_met is True
    rows = artifacts(state)["dr-drill"]
    assert rows[0]["outcome"] == "recovered"


def test_drill_missing_an_objective_fails_and_notifies(app_env: AppEnv) -> None:
    app_env.backup()
    app_env.write_config(
        top=(
            f'environment = "test-{app_env.dbname}"\nhealth_deadline_s = 20\n'
            "[objectives]\nrpo_minutes = 0.001\n"
        )
    )
    state = rebuild_drill(config=str(app_env.config), return_state=True)
    assert state.is_failed()
    assert "RPO" in state.message
    assert "over the objective of 0.001 min" in state.message
    [rec] = _history(app_env, "drill")
    assert rec.rpo_met is False
    assert rec.target == "infrastructure-loss"
    assert any("rebuild-drill failed" in s for s in app_env.webhook.subjects())


def test_dr_status_shows_the_trend_against_the_objectives(app_env: AppEnv) -> None:
    import json

    from tests.conftest import run_dr

    r = run_dr("status", "--config", str(app_env.config), "--json")
    assert r.returncode == 1  # no backup yet: status says so
    assert json.loads(r.stdout)["databases"][0]["last_backup"] is None
    assert nightly_backup(config=str(app_env.config), return_state=True).is_completed()
    assert restore_test(config=str(app_env.config), return_state=True).is_completed()
    assert dr_drill(config=str(app_env.config), return_state=True).is_completed()
    r = run_dr("status", "--config", str(app_env.config), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    [db] = json.loads(r.stdout)["databases"]
    assert db["last_backup_run"] == "ok"
    assert db["verified"] == "ok"
    assert db["last_restore_test"]["ok"] is True
    assert db["last_restore_test"]["rto"] == "met"
    assert db["last_drill"]["scenario"] == "database-corruption"
    assert (db["last_drill"]["rto"], db["last_drill"]["rpo"]) == ("met", "met")
    text = run_dr("status", "--config", str(app_env.config)).stdout
    assert "last drill:        database-corruption" in text


def test_a_dry_run_quotes_the_rto_of_the_last_drill(app_env: AppEnv) -> None:
    from flows.database_corruption import database_corruption

    app_env.backup()
    assert dr_drill(config=str(app_env.config), return_state=True).is_completed()
    state = database_corruption(config=str(app_env.config), dry_run=True, return_state=True)
    plan = artifacts(state)["database-corruption-plan"]
    assert "expected RTO: " in plan
    assert "measured by the drill of" in plan
