"""prefect.yaml: every deployment imports to its flow and registers with a Prefect server, so
on-call finds each scenario in the UI with its parameter form."""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cronsim import CronSim
from prefect import get_client
from prefect.settings import PREFECT_API_URL

REPO = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
SCENARIOS = {"database-corruption", "infrastructure-loss", "data-loss", "security-breach"}


def _flow(dep: dict[str, Any]) -> Any:
    path, func = dep["entrypoint"].split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)


def test_every_entrypoint_imports_to_a_flow_and_its_parameters_validate() -> None:
    names = set()
    for dep in SPEC["deployments"]:
        flow = _flow(dep)
        if dep["name"] in SCENARIOS:
            assert flow.name == dep["name"]
        params = dict(dep.get("parameters") or {})
        if dep["name"] == "data-loss":  # given by on-call in the run form
            params["deleted_at"] = "2027-01-01T00:00:00Z"
        if dep["name"] == "security-breach":
            params["breach_at"] = "2027-01-01T00:00:00Z"
        flow.validate_parameters(params)  # raises if they do not fit the signature
        assert dep["work_pool"]["name"] == "dr-process"
        names.add(dep["name"])
    assert names == SCENARIOS | set(CALENDAR)


# the runbook's calendar: deployment -> (cron, what it must fire on)
CALENDAR = {
    "nightly-backup": "0 2 * * *",  # Automated Backups: daily at 2:00 AM UTC
    "backup-verification": "0 6 * * *",  # Daily Verification
    "restore-test": "0 4 * * 0",  # Weekly Full Test
    "staging-restore": "0 5 1 * *",  # Monthly: restore test in staging
    "dr-drill": "0 9 1 1,4,7,10 *",  # Quarterly: full DR drill
    "rebuild-drill": "0 10 15 1 *",  # Annually: complete infrastructure rebuild
    "backup-monitor": "0 * * * *",  # Backup Monitoring: hourly
    "escalation": "*/5 * * * *",  # Communication Plan: escalation checked every 5 minutes
}


MIN = timedelta(minutes=1)


def _fires(cron: str, days: int) -> list[datetime]:
    it = CronSim(cron, datetime(2027, 1, 1, tzinfo=UTC))
    end = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=days)
    out = []
    for t in it:
        if t >= end:
            return out
        out.append(t)
    return out


def test_schedules_follow_the_runbook_calendar_in_utc() -> None:
    by_name = {d["name"]: d for d in SPEC["deployments"]}
    for name, cron in CALENDAR.items():
        [schedule] = by_name[name]["schedules"]
        assert schedule["cron"] == cron
        assert schedule["timezone"] == "UTC"
        assert schedule["active"] is True
    year = 365
    assert len(_fires(CALENDAR["nightly-backup"], year)) == 365
    assert all(t.hour == 2 and t.minute == 0 for t in _fires(CALENDAR["nightly-backup"], 7))
    assert len(_fires(CALENDAR["backup-verification"], year)) == 365
    weekly = _fires(CALENDAR["restore-test"], year)
    assert len(weekly) == 52
    assert {t.weekday() for t in weekly} == {6}
    assert len(_fires(CALENDAR["staging-restore"], year)) == 12
    assert [t.month for t in _fires(CALENDAR["dr-drill"], year)] == [1, 4, 7, 10]
    assert len(_fires(CALENDAR["rebuild-drill"], year)) == 1
    for name, every in (("backup-monitor", timedelta(hours=1)), ("escalation", 5 * MIN)):
        fires = _fires(CALENDAR[name], 2)
        assert {b - a for a, b in itertools.pairwise(fires)} == {every}
    for name in SCENARIOS:
        assert not by_name[name].get("schedules")  # on-call starts those
    for name in ("restore-test", "staging-restore", "dr-drill", "rebuild-drill"):
        assert by_name[name]["concurrency_limit"] == 1  # never two at once on one target


@pytest.mark.slow
def test_prefect_deploy_registers_every_scenario_with_its_form(prefect_api: None) -> None:
    api = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": api}
    prefect = str(Path(sys.executable).with_name("prefect"))
    subprocess.run(
        [prefect, "work-pool", "create", "dr-process", "--type", "process", "--overwrite"],
        env=env,
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with get_client(sync_client=True) as client:
        for name in SCENARIOS:
            dep = client.read_deployment_by_name(f"{name}/{name}")
            schema = dep.parameter_openapi_schema
            assert {"config", "confirm", "dry_run"} <= set(schema["properties"])
            if name != "infrastructure-loss":
                assert "keep_down_on_failure" in schema["properties"]
        nightly = client.read_deployment_by_name("nightly-backup/nightly-backup")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        assert [s.schedule.timezone for s in nightly.schedules] == ["UTC"]
        assert all(s.active for s in nightly.schedules)
        staging = client.read_deployment_by_name("restore-test/staging-restore")
        assert staging.parameters == {"config": "staging.dr.toml", "database": "main"}
        strategy = client.read_deployment_by_name("data-loss/data-loss").parameter_openapi_schema
        assert strategy["required"] == ["deleted_at"]
        assert strategy["definitions"]["BackupStrategy"]["enum"] == [
            "latest",
            "backup_id",
            "before",
        ]
