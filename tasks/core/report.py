"""What a scenario did, as data, and the documents made from it: the live Recovery Checklist and
the final incident report (markdown). Pure: no Prefect, no I/O; the flow publishes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from tasks.core.objectives import Measurement
from tasks.core.units import utc

__all__ = ["CHECKLIST", "POST_RECOVERY", "Check", "ScenarioReport", "Step"]

# The runbook's "Recovery Checklist", in its order.
CHECKLIST = (
    "Assess situation and scope",
    "Notify team and stakeholders",
    "Stop further damage",
    "Identify recovery point",
    "Provision infrastructure (if needed)",
    "Restore database",
    "Restore Redis cache",
    "Deploy application",
    "Update DNS (if needed)",
    "Verify services",
    "Monitor for issues",
    "Document incident",
    "Post-mortem review",
)

# The runbook's "Post-Recovery Actions", as the RCA to-do list of every report.
POST_RECOVERY = (
    "Root cause analysis: document the incident",
    "Root cause analysis: identify the root cause",
    "Root cause analysis: create action items",
    "Improvements: update procedures",
    "Improvements: enhance monitoring",
    "Improvements: improve backups",
    "Documentation: update the runbook",
    "Documentation: share lessons learned",
    "Documentation: train the team",
)

StepStatus = Literal["running", "ok", "failed", "skipped", "not configured"]
_ICON = {"running": "⏳", "ok": "✅", "failed": "❌", "skipped": "⏭️", "not configured": "⚪"}


@dataclass
class Step:
    name: str
    checklist: str | None  # the checklist item this step completes, if any
    status: StepStatus = "running"
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    detail: str = ""

    @property
    def duration_s(self) -> float | None:
        return (
            None
            if self.finished_at is None
            else (self.finished_at - self.started_at).total_seconds()
        )


@dataclass(frozen=True)
class Check:
    """One verification line: a table count or a critical query."""

    name: str
    expected: str
    actual: str
    ok: bool


@dataclass
class ScenarioReport:
    scenario: str
    environment: str
    started_at: datetime
    params: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    backup: str | None = None  # "id (taken ..., from ...)"
    measurement: Measurement | None = None
    outcome: str = "running"
    final_state: list[str] = field(default_factory=list)  # what is where now, for on-call

    def begin(self, name: str, checklist: str | None = None) -> Step:
        step = Step(name, checklist)
        self.steps.append(step)
        return step

    @staticmethod
    def end(step: Step, status: StepStatus, detail: str = "") -> None:
        step.status, step.detail = status, detail
        step.finished_at = datetime.now(UTC)

    def checklist_rows(self) -> list[dict[str, str]]:
        """One row per runbook checklist item: done / failed / not needed / pending."""
        rows = []
        for item in CHECKLIST:
            steps = [s for s in self.steps if s.checklist == item]
            if not steps:
                state = "pending" if self.outcome == "running" else "not part of this scenario"
            elif any(s.status == "failed" for s in steps):
                state = "failed"
            elif any(s.status == "running" for s in steps):
                state = "in progress"
            elif all(s.status in ("skipped", "not configured") for s in steps):
                state = steps[-1].status
            else:
                state = "done"
            detail = "; ".join(s.detail for s in steps if s.detail)
            rows.append({"item": item, "state": state, "detail": detail})
        return rows

    def to_markdown(self) -> str:
        lines = [
            f"# {self.scenario}: {self.outcome}",
            "",
            f"* environment: **{self.environment}**",
            f"* started: {utc(self.started_at)}",
        ]
        lines += [f"* {k}: {v}" for k, v in self.params.items()]
        if self.backup:
            lines.append(f"* backup used: {self.backup}")
        lines += ["", "## Objectives", ""]
        lines += self._objectives()
        lines += [
            "",
            "## Timeline",
            "",
            "| step | status | duration | detail |",
            "|---|---|---|---|",
        ]
        for s in self.steps:
            dur = "-" if s.duration_s is None else f"{s.duration_s:.1f} s"
            lines.append(f"| {s.name} | {_ICON[s.status]} {s.status} | {dur} | {_cell(s.detail)} |")
        if self.checks:
            lines += [
                "",
                "## Verification",
                "",
                "| check | expected | actual | result |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {_cell(c.name)} | {c.expected} | {c.actual} | {'✅' if c.ok else '❌'} |"
                for c in self.checks
            ]
        if self.final_state:
            lines += ["", "## State of the system now", ""]
            lines += [f"* {s}" for s in self.final_state]
        lines += ["", "## Post-recovery actions", ""]
        lines += [f"- [ ] {a}" for a in POST_RECOVERY]
        return "\n".join(lines) + "\n"

    def _objectives(self) -> list[str]:
        m = self.measurement
        if m is None:
            return ["not measured (the scenario did not reach a recovery)"]

        def verdict(met: bool | None) -> str:
            return "not reached" if met is None else ("**met**" if met else "**MISSED**")

        rto = "-" if m.rto_s is None else f"{m.rto_s / 60:.1f} min"
        rpo = "-" if m.rpo_s is None else f"{m.rpo_s / 60:.1f} min"
        return [
            "| objective | target | measured | verdict |",
            "|---|---|---|---|",
            f"| RTO (start → healthy) | {m.objectives.rto_minutes:g} min | {rto} | "
            f"{verdict(m.rto_met)} |",
            f"| RPO (incident → recovery point) | {m.objectives.rpo_minutes:g} min | {rpo} |"
            f" {verdict(m.rpo_met)} |",
        ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
