"""Metrics as Prometheus sees them: scraped over HTTP (and read from the textfile) and parsed
with prometheus_client's own parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tasks.core import metrics
from tasks.core.catalog import Catalog
from tasks.core.config import Objectives
from tasks.core.history import Record, read_history, record_run
from tasks.core.monitor import Alert, Facts, Target
from tasks.core.storage.local import LocalStorage
from tests.core.fake_backups import put_backup

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels without environment) -> value, parsed by prometheus_client."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "environment"))
            out[(s.name, labels)] = s.value
    return out


def environment(tmp_path: Path) -> tuple[Facts, list[Alert]]:
    loc = LocalStorage(tmp_path / "backups")
    put_backup([loc], "app", NOW - 30 * HOUR, size=900, verified=True)
    put_backup([loc], "app", NOW - 6 * HOUR, size=1000, verified=False)  # known bad
    put_backup([loc], "app", NOW - 5 * HOUR, size=1200)
    t = NOW - 5 * HOUR
    for rec in (
        Record("backup", "prod", "main", t, t + timedelta(seconds=42), True),
        Record("restore-test", "prod", "main", t, t + HOUR, True, rto_s=310.0),
        Record("drill", "prod", "database-corruption", t, t + HOUR, True, rto_s=900, rpo_s=60),
    ):
        record_run([loc], rec)
    catalog = Catalog([loc])
    facts = Facts([Target("main", "app")], catalog.list().backups, read_history([loc]))
    return facts, [Alert("backup-size", "main", "+33 %")]


def test_metrics_scraped_over_http(tmp_path: Path) -> None:
    facts, alerts = environment(tmp_path)
    reg = metrics.registry(lambda: metrics.families(facts, alerts, Objectives(), "prod", NOW))
    server, _ = metrics.serve(reg, 0, "127.0.0.1")
    try:
        resp = httpx.get(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert resp.status_code == 200
    got = samples(resp.text)
    main = (("database", "main"),)
    newest = facts.backups[0].manifest
    assert got[("dr_backup_last_success_timestamp_seconds", main)] == newest.finished_at.timestamp()
    assert got[("dr_backup_age_seconds", main)] == 5 * 3600
    assert got[("dr_backup_size_bytes", main)] == 1200
    assert got[("dr_backup_duration_seconds", main)] == 42
    assert got[("dr_backup_last_run_ok", main)] == 1
    assert ("dr_backup_verification_ok", main) not in got  # the newest was never verified
    assert got[("dr_backups", (("database", "main"), ("location", str(tmp_path / "backups"))))] == 3
    assert got[("dr_restore_test_rto_seconds", main)] == 310
    assert got[("dr_drill_rto_seconds", (("scenario", "database-corruption"),))] == 900
    assert got[("dr_drill_rpo_seconds", (("scenario", "database-corruption"),))] == 60
    assert got[("dr_objective_seconds", (("objective", "rto"),))] == 3600
    assert got[("dr_alert_active", (("rule", "backup-size"), ("target", "main")))] == 1
    assert got[("dr_alerts_active", ())] == 1


def test_metrics_written_for_the_textfile_collector(tmp_path: Path) -> None:
    facts, _ = environment(tmp_path)
    reg = metrics.registry(lambda: metrics.families(facts, [], Objectives(), "prod", NOW))
    path = metrics.write_textfile(reg, tmp_path / "textfile")
    assert [p.name for p in path.parent.iterdir()] == ["dr.prom"]  # no temporary left behind
    got = samples(path.read_text())
    assert got[("dr_alerts_active", ())] == 0
    assert got[("dr_backup_size_bytes", (("database", "main"),))] == 1200
    assert metrics.render(reg) == path.read_text()
