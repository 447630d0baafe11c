"""Monitoring, escalation and retention as on-call meets them: alerts and escalations delivered
through a real Prefect CustomWebhookNotificationBlock to a real HTTP listener, the hourly
monitor paging once per incident, the nightly flow applying the tiered policy to local + S3, and
the `dr retention / pin / unpin / metrics` commands run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prometheus_client.parser import text_string_to_metric_families

from flows.backup_monitor import backup_monitor
from flows.database_corruption import database_corruption
from flows.escalation import escalation
from flows.nightly_backup import nightly_backup
from tasks.core.comms import Incident, IncidentStore
from tasks.core.config import load_config
from tasks.core.environment import build_catalog
from tasks.core.pgcluster import free_port
from tasks.core.storage.local import LocalStorage
from tests.conftest import DR, run_dr
from tests.core.fake_backups import put_backup
from tests.flows.conftest import AppEnv, Webhook, artifacts

pytestmark = pytest.mark.timeout(300)
DAY = timedelta(days=1)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def _blocks(webhook: Webhook, *audiences: str) -> str:
    """A CustomWebhookNotificationBlock per audience (saved in the test Prefect server), and
    the [[notifications]] naming them."""
    sections = []
    for audience in audiences:
        CustomWebhookNotificationBlock(
            name=f"dr-{audience}",
            url=webhook.url + f"?audience={audience}",
            json_data={"subject": "{{subject}}", "text": "{{body}}", "audience": audience},
        ).save(f"dr-{audience}", overwrite=True)
        sections.append(
            f'[[notifications]]\naudience = "{audience}"\nblock = "custom-webhook/dr-{audience}"\n'
        )
    return "\n".join(sections)


def _config(tmp_path: Path, notifications: str) -> Path:
    path = tmp_path / "dr.toml"
    path.write_text(
        'environment = "mon"\n[storage]\nbackup_dir = "backups"\n'
        '[[databases]]\nname = "main"\nurl = "postgresql://app@127.0.0.1/app"\n' + notifications
    )
    return path


def _received(webhook: Webhook) -> list[tuple[str, str]]:
    return [(m["audience"], m["subject"]) for m in webhook.messages]


def test_the_hourly_monitor_pages_once_and_announces_the_resolution(
    prefect_api: None, tmp_path: Path, webhook: Webhook
) -> None:
    config = _config(
        tmp_path, _blocks(webhook, "on-call") + '[monitoring]\ntextfile_dir = "prom"\n'
    )
    loc = LocalStorage(tmp_path / "backups")
    now = datetime.now(UTC)
    put_backup([loc], "app", now - 30 * timedelta(hours=1))
    for _ in range(2):  # two hourly runs: one page
        state = backup_monitor(config=str(config), return_state=True)
        assert state.is_completed(), state.message
    assert len(webhook.messages) == 1
    [(audience, subject)] = _received(webhook)
    assert audience == "on-call"
    assert subject.startswith("[DR mon] ALERT backup-stale main: the newest good backup of main")
    body = webhook.messages[0]["text"]
    assert "What is being done: nothing automatic: on-call takes a backup now" in body
    run_id = str(state.state_details.flow_run_id)
    assert f"/runs/flow-run/{run_id}" not in body  # the alert links the run that fired it:
    assert "/runs/flow-run/" in body  # the first of the two
    prom = (tmp_path / "prom" / "dr.prom").read_text()  # for node-exporter, every hour
    active = {
        tuple(sorted(x.labels.items())): x.value
        for f in text_string_to_metric_families(prom)
        for x in f.samples
        if x.name == "dr_alert_active"
    }
    assert active == {(("environment", "mon"), ("rule", "backup-stale"), ("target", "main")): 1}
    rows = artifacts(state)["backup-monitor"]
    assert [(r["rule"], r["new"]) for r in rows] == [("backup-stale", False)]
    put_backup([loc], "app", now - timedelta(hours=1))  # a fresh backup: the condition clears
    state = backup_monitor(config=str(config), return_state=True)
    assert state.message == "0 alert(s) firing (0 new), 1 resolved"
    assert _received(webhook)[-1] == (
        "on-call",
        "[DR mon] backup-stale main: resolved, the condition cleared",
    )
    assert len(webhook.messages) == 2


def test_escalation_tells_the_next_audience_once(
    prefect_api: None, tmp_path: Path, webhook: Webhook
) -> None:
    config = _config(tmp_path, _blocks(webhook, "on-call", "engineering", "management"))
    store = IncidentStore(build_catalog(load_config(config)).locations[0])
    # an incident opened 12 minutes ago, on-call told then (the record, not the clock, is set)
    opened = datetime.now(UTC) - timedelta(minutes=12)
    store.save(
        Incident(
            key="alert:backup-failing:main",
            name="backup-failing main",
            title="ALERT backup-failing main: the last 2 backup runs of main failed",
            environment="mon",
            opened_at=opened,
            what_happened="the last 2 backup runs of main failed",
            being_done="on-call looks at the failed runs",
            told={"on-call": opened},
        )
    )
    for _ in range(2):
        state = escalation(config=str(config), return_state=True)
        assert state.is_completed(), state.message
    assert _received(webhook) == [
        (
            "engineering",
            "[DR mon] ALERT backup-failing main: the last 2 backup runs of main failed "
            "(unresolved after 12 min)",
        )
    ]
    assert "Already told: on-call" in webhook.messages[0]["text"]
    assert set(store.get("alert:backup-failing:main").told) == {"on-call", "engineering"}  # type: ignore[union-attr]


def test_a_scenario_opens_an_incident_and_resolves_it_to_everyone_told(
    app_env: AppEnv,
) -> None:
    webhook = app_env.webhook
    app_env.write_config(notifications=_blocks(webhook, "on-call", "engineering"))
    state = database_corruption(config=str(app_env.config), confirm=True, return_state=True)
    assert state.is_failed()  # no backup yet: fails, and says so
    received = _received(webhook)
    assert len(received) == 2  # engineering is not told: resolved within minutes
    assert received[0] == ("on-call", f"[DR test-{app_env.dbname}] database-corruption started")
    assert "RTO clock: 0 min since the start, objective 60 min" in webhook.messages[0]["text"]
    run_id = state.state_details.flow_run_id
    assert f"/runs/flow-run/{run_id}" in webhook.messages[0]["text"]  # the link to the run
    assert received[1][0] == "on-call"
    assert "database-corruption: FAILED: no good backup" in received[1][1]
    store = IncidentStore(build_catalog(load_config(app_env.config)).locations[0])
    assert store.open_incidents() == []  # resolved: the escalation check has nothing to do


def test_nightly_backup_applies_the_tiered_policy_to_local_and_s3(app_env: AppEnv) -> None:
    app_env.write_config(retention="[retention]\n")  # the runbook's table
    cfg = load_config(app_env.config)
    catalog = build_catalog(cfg)
    now = datetime.now(UTC)
    old = {
        age: put_backup(catalog.locations, app_env.dbname, now - age * DAY)
        for age in (10, 11, 40, 400)
    }
    state = nightly_backup(config=str(app_env.config), return_state=True)
    assert state.is_completed(), state.message
    rows = artifacts(state)["nightly-backup"]
    assert rows[-1]["database"] == "(retention)"
    held = {
        loc.name: {e.backup_id for e in catalog.list().backups if loc in e.locations}
        for loc in catalog.locations
    }
    assert old[400] not in held["local"] | held["s3"]  # older than every window
    assert old[10] in held["s3"]
    assert old[11] in held["s3"]
    assert old[40] not in held["local"]  # local: no monthly tier
    assert len(held["local"]) >= 2  # tonight's backup and at least one older representative


def test_retention_pin_and_unpin_from_the_command_line(tmp_path: Path) -> None:
    config = _config(tmp_path, "")
    loc = LocalStorage(tmp_path / "backups")
    now = datetime.now(UTC)
    ids = [put_backup([loc], "app", now - (age + 0.5) * DAY) for age in range(20)]
    env = {"DR_CONFIG": str(config)}
    plan = run_dr("retention", "--dry-run", "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    decisions = json.loads(plan.stdout)["decisions"]
    doomed = [d["backup_id"] for d in decisions if not d["keep"]]
    assert doomed
    assert all(d["reason"] for d in decisions)
    pinned = run_dr("pin", doomed[0], "--reason", "audit", env=env)
    assert pinned.returncode == 0, pinned.stderr
    applied = run_dr("retention", "--apply", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "pinned (audit)" in applied.stdout
    left = {p.name for p in (tmp_path / "backups").iterdir() if not p.name.startswith("_")}
    assert left == set(ids) - set(doomed[1:])
    assert run_dr("unpin", doomed[0], env=env).returncode == 0
    again = run_dr("unpin", doomed[0], env=env)
    assert again.returncode == 1
    assert "no pinned backup" in again.stderr
    both = run_dr("retention", "--dry-run", "--apply", env=env)
    assert both.returncode == 2


def test_dr_metrics_prints_writes_and_serves(tmp_path: Path) -> None:
    config = _config(tmp_path, "")
    put_backup([LocalStorage(tmp_path / "backups")], "app", datetime.now(UTC) - DAY / 2)
    env = {"DR_CONFIG": str(config)}
    printed = run_dr("metrics", env=env)
    assert printed.returncode == 0, printed.stderr
    names = {f.name for f in text_string_to_metric_families(printed.stdout)}
    assert {"dr_backup_age_seconds", "dr_backup_size_bytes", "dr_alerts_active"} <= names
    written = run_dr("metrics", "--textfile", str(tmp_path / "prom"), env=env)
    assert written.returncode == 0, written.stderr
    assert [p.name for p in (tmp_path / "prom").iterdir()] == ["dr.prom"]
    port = free_port()
    server = subprocess.Popen(
        [DR, "metrics", "--serve", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline and not text:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(10)
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["dr_backup_size_bytes"] == 100
    assert 0.4 * 86400 < samples["dr_backup_age_seconds"] < 0.6 * 86400
    assert samples["dr_alerts_active"] == 0


@pytest.mark.slow
def test_the_wal_age_comes_from_pgbackrest(prefect_api: None) -> None:
    from tasks import monitor as monitor_tasks
    from tasks.core import monitor
    from tasks.core.pitr import backup_physical
    from tests import pitr_fixtures

    env = pitr_fixtures.make_pitr_env()
    try:
        cfg = env.cfg()
        backup_physical(cfg)  # archives the WAL it needs: the repository has a newest segment
        an_hour_later = datetime.now(UTC) + timedelta(hours=1)
        ages = monitor_tasks.wal_ages.fn(cfg, an_hour_later)
        assert ages is not None
        assert set(ages) == {"main"}
        assert 3600 - 60 < ages["main"] < 3600 + 600  # repository times are whole seconds
        alerts = monitor.wal_stale(ages["main"], cfg.objectives.rpo_minutes * 60, "main")
        assert alerts is not None
        state = backup_monitor(config=str(env.config), return_state=True)  # asks pgBackRest
        assert state.is_completed(), state.message
        assert "alert:wal-stale:main" not in state.result()["alerts"]  # archived just now
    finally:
        pitr_fixtures.cleanup(env)
