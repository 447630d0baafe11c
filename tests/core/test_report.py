"""The incident report and the live checklist, from recorded steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.core.config import Objectives
from tasks.core.objectives import Measurement
from tasks.core.report import CHECKLIST, POST_RECOVERY, Check, ScenarioReport

T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def test_checklist_follows_the_steps() -> None:
    r = ScenarioReport("database-corruption", "production", T0)
    stop = r.begin("Stop the application", "Stop further damage")
    rows = {row["item"]: row["state"] for row in r.checklist_rows()}
    assert list(rows) == list(CHECKLIST)
    assert rows["Stop further damage"] == "in progress"
    assert rows["Restore database"] == "pending"
    r.end(stop, "ok", "scaled to 0 from backend=3")
    restore = r.begin("Restore the database", "Restore database")
    r.end(restore, "failed", "no intact copy")
    r.end(r.begin("Update DNS", "Update DNS (if needed)"), "not configured", "no [dns]")
    r.outcome = "FAILED: no intact copy"
    rows = {row["item"]: row for row in r.checklist_rows()}
    assert rows["Stop further damage"]["state"] == "done"
    assert rows["Stop further damage"]["detail"] == "scaled to 0 from backend=3"
    assert rows["Restore database"]["state"] == "failed"
    assert rows["Update DNS (if needed)"]["state"] == "not configured"
    assert rows["Restore Redis cache"]["state"] == "not part of this scenario"


def test_report_shows_objectives_timeline_checks_and_rca_todo() -> None:
    r = ScenarioReport("data-loss", "staging", T0, params={"database": "main"})
    s = r.begin("Restore the database", "Restore database")
    s.started_at = T0
    r.end(s, "ok", "took | a pipe")
    s.finished_at = T0 + timedelta(seconds=42)
    r.checks.append(Check("public.users", "100", "100", True))
    r.checks.append(Check("orphans", "0..0", "3", False))
    r.measurement = Measurement(
        Objectives(), T0, T0 + timedelta(minutes=75), T0, T0 - timedelta(minutes=5)
    )
    r.outcome = "recovered, RTO MISSED"
    md = r.to_markdown()
    assert md.startswith("# data-loss: recovered, RTO MISSED\n")
    assert "| RTO (start → healthy) | 60 min | 75.0 min | **MISSED** |" in md
    assert "| RPO (incident → recovery point) | 15 min | 5.0 min | **met** |" in md
    assert "| Restore the database | ✅ ok | 42.0 s | took \\| a pipe |" in md
    assert "| orphans | 0..0 | 3 | ❌ |" in md
    assert all(f"- [ ] {a}" in md for a in POST_RECOVERY)
