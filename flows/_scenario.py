"""What every scenario flow shares: typed parameters for the UI form, the approval pause, the
live checklist and the final report, the one-recovery-per-environment lock, and the failure path
that puts workloads back where they were.

Orchestration only: every side effect is a task in tasks/, every decision of substance is in
tasks/core. A scenario flow body is a short list of ``run.step(...)`` blocks, one per runbook step.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel, ConfigDict, Field

from tasks import monitor as monitor_tasks
from tasks import notify as notify_tasks
from tasks import platform as platform_tasks
from tasks.core.catalog import BackupEntry
from tasks.core.comms import Incident
from tasks.core.config import Config, load_config
from tasks.core.dburl import redact
from tasks.core.errors import ConfigError, DRError
from tasks.core.objectives import Measurement
from tasks.core.platform import ScaleState
from tasks.core.report import ScenarioReport, Step, StepStatus
from tasks.core.units import old, utc

__all__ = ["Approval", "BackupChoice", "BackupStrategy", "Rejected", "ScenarioRun"]


class BackupStrategy(enum.StrEnum):
    latest = "latest"
    backup_id = "backup_id"
    before = "before"


class BackupChoice(BaseModel):
    """Which backup to restore (the UI shows this as a small form)."""

    model_config = ConfigDict(frozen=True)

    strategy: BackupStrategy = Field(
        BackupStrategy.latest,
        title="Strategy",
        description="latest good, a given id, or newest before a time",
    )
    backup_id: str = Field("", description="with strategy backup_id: the id (or unique prefix)")
    before: datetime | None = Field(None, description="with strategy before: a UTC time")


class Approval(RunInput):
    approved: bool
    approver: str
    ticket: str = ""


class Rejected(DRError):
    """On-call rejected the plan, or nobody answered in time."""


class ScenarioRun:
    """One run of a scenario: its report, its artifacts, its approvals, its lock."""

    def __init__(
        self, scenario: str, config: str, params: dict[str, Any], incident_at: datetime | None
    ) -> None:
        self.scenario = scenario
        self.cfg: Config = load_config(config or None)
        self.started_at = datetime.now(UTC)
        self.incident_at = incident_at.astimezone(UTC) if incident_at else None
        shown = {k: _show(v) for k, v in params.items() if v not in (None, "", False, ())}
        self.report = ScenarioReport(scenario, self.cfg.environment, self.started_at, shown)
        self.scale_state: ScaleState | None = None  # the recorded inverse of the scale-down
        self.recovery_point: datetime | None = None
        self.incident_key: str | None = None  # the communication plan's record of this run
        self.log = get_run_logger()

    # ---- steps and artifacts ------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str, checklist: str | None = None) -> Iterator[Step]:
        """Record a step around the block: ok when it ends, failed (with the error) if it
        raises; the checklist artifact is republished either way."""
        s = self.report.begin(name, checklist)
        try:
            yield s
        except BaseException as exc:
            self.report.end(s, "failed", redact(str(exc)) or type(exc).__name__)
            self.publish_checklist()
            raise
        if s.status == "running":
            self.report.end(s, "ok", s.detail)
        self.publish_checklist()

    def optional(
        self, name: str, checklist: str | None, missing: str | None, action: Callable[[], str]
    ) -> None:
        """A step that runs only when configured: ``missing`` says what is not (the step is
        then shown as "not configured"); otherwise ``action`` runs and returns the detail."""
        if missing is not None:
            self.skip(name, checklist, "not configured", missing)
            return
        with self.step(name, checklist) as s:
            s.detail = action()

    def skip(self, name: str, checklist: str | None, status: StepStatus, detail: str) -> None:
        s = self.report.begin(name, checklist)
        self.report.end(s, status, detail)
        self.log.info("%s: %s (%s)", name, status, detail)
        self.publish_checklist()

    def publish_checklist(self) -> None:
        create_table_artifact(
            key=f"{self.scenario}-checklist",
            table=self.report.checklist_rows(),
            description=f"Recovery checklist: {self.scenario}",
        )

    def publish_report(self) -> None:
        create_markdown_artifact(
            key=f"{self.scenario}-report",
            markdown=self.report.to_markdown(),
            description=f"Incident report: {self.scenario}",
        )

    def notify(self, subject: str, body: str, audiences: Sequence[str] = ("on-call",)) -> str:
        """Send to the configured targets of ``audiences``; returns who was reached."""
        if not self.cfg.notifications:
            return "nobody configured"
        reached = notify_tasks.notify(
            self.cfg, f"[DR {self.cfg.environment}] {subject}", body, audiences
        )
        self.log.info("notified: %s", ", ".join(reached) or "nobody reachable")
        return "reached " + (", ".join(reached) or "nobody")

    def publish_plan(self, lines: Sequence[str]) -> State[Any]:
        """The end of a dry run: ``lines`` (markdown) as the ``<scenario>-plan`` artifact and
        the run Completed with them; nothing was changed."""
        markdown = "\n".join(lines) + "\n"
        create_markdown_artifact(
            key=f"{self.scenario}-plan", markdown=markdown, description=f"Dry run: {self.scenario}"
        )
        self.report.outcome = "dry run: plan published, nothing changed"
        return Completed(
            message=self.report.outcome,
            data={"scenario": self.scenario, "outcome": self.report.outcome, "report": markdown},
        )

    def open_incident(self, started: str) -> str:
        """Open this run's incident: on-call (and stakeholders on data loss or a breach) are
        told now, the escalation deployment tells the next audiences on time. If the incident
        store is unusable, on-call is still told directly."""
        key = f"scenario:{self.scenario}:{flow_run.get_id() or self.started_at.isoformat()}"
        incident = Incident(
            key=key,
            name=self.scenario,
            title=f"{self.scenario} started",
            environment=self.cfg.environment,
            opened_at=self.started_at,
            what_happened=f"{self.scenario} recovery started ({started})",
            being_done=f"the {self.scenario} flow runs the runbook's recovery steps; "
            "its live checklist is in the flow run",
            rto_objective_s=self.cfg.objectives.rto_minutes * 60,
            downtime_since=self.started_at,
            data_loss=self.scenario == "data-loss",
            breach=self.scenario == "security-breach",
            run_url=monitor_tasks.flow_run_url(),
        )
        try:
            told = monitor_tasks.open_incident(self.cfg, incident, datetime.now(UTC))
        except Exception as exc:  # telling people matters more than the record of it
            self.log.warning("incident not recorded (%s): telling on-call", redact(str(exc)))
            return self.notify(f"{self.scenario} started", started)
        self.incident_key = key
        return "told " + ", ".join(told)

    def close_incident(self, subject: str, body: str) -> None:
        """Announce the end to everyone who was told (on-call alone without an incident)."""
        if self.incident_key is not None:
            try:
                told = monitor_tasks.resolve_incident(
                    self.cfg, self.incident_key, subject, body, datetime.now(UTC)
                )
                if told is not None:
                    self.log.info("resolution announced to: %s", ", ".join(told))
                    return
            except Exception as exc:
                self.log.warning("incident not closed (%s): telling on-call", redact(str(exc)))
        self.notify(subject, body)

    # ---- safety -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def recovery_lock(self) -> Iterator[None]:
        """One recovery per environment at a time (a Prefect global concurrency limit)."""
        name = f"dr-recovery-{self.cfg.environment}"
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(name, 1)
        try:
            cm = concurrency(name, occupy=1, strict=True, timeout_seconds=15)
            cm.__enter__()
        except Exception as exc:
            raise ConfigError(
                f"another recovery of environment {self.cfg.environment!r} is "
                "running; wait for it or cancel it"
            ) from exc
        try:
            yield
        finally:
            cm.__exit__(None, None, None)

    def approve(
        self,
        plan: Sequence[str],
        *,
        confirm: bool,
        timeout_s: int,
        on_reject: str = "the workloads go back to their previous scale",
    ) -> str:
        """Pause for on-call's decision unless ``confirm``; returns who approved."""
        if confirm:
            return "confirm=True (automation)"
        done = [s.name for s in self.report.steps if s.status == "ok"]
        description = "\n".join(
            [
                f"## Approve the {self.scenario} recovery?",
                "",
                *[f"* {line}" for line in plan],
                "",
                f"Done so far: {', '.join(done) or 'nothing'}. Nothing has been restored yet. "
                f"Reject to stop here: {on_reject}.",
            ]
        )
        self.notify("approval needed", "\n".join(plan))
        try:
            decision = pause_flow_run(
                wait_for_input=Approval.with_initial_data(
                    description=description, approved=False, approver=""
                ),
                timeout=timeout_s,
                poll_interval=2 if timeout_s > 60 else 1,
            )
        except FlowPauseTimeout:
            raise Rejected(f"no approval within {timeout_s}s: nothing was restored") from None
        who = decision.approver or "unknown"
        if not decision.approved:
            raise Rejected(f"rejected by {who}: nothing was restored")
        return who + (f" ({decision.ticket})" if decision.ticket else "")

    def stop_workloads(self, workloads: Sequence[str]) -> None:
        """Scale to 0 (recording the inverse first) and wait until nothing runs."""
        if not workloads:
            self.skip(
                "Stop the application",
                "Stop further damage",
                "not configured",
                "no workloads in the config",
            )
            return
        with self.step("Stop the application", "Stop further damage") as s:
            self.scale_state = platform_tasks.scale_down_workloads(self.cfg, workloads)
            platform_tasks.wait_ready(
                self.cfg, dict.fromkeys(workloads, 0), self.cfg.platform.ready_timeout_s
            )
            s.detail = "scaled to 0 from " + ", ".join(
                f"{n}={r}" for n, r in self.scale_state.replicas.items()
            )

    def start_workloads(
        self, replicas: dict[str, int] | None = None, *, name: str = "Restart the application"
    ) -> None:
        """Scale back to the recorded replicas (or ``replicas``) and wait until ready."""
        target = (
            replicas
            if replicas is not None
            else (self.scale_state.replicas if self.scale_state else {})
        )
        if not target:
            self.skip(name, "Deploy application", "not configured", "no workloads in the config")
            return
        with self.step(name, "Deploy application") as s:
            platform_tasks.scale_up_workloads(self.cfg, ScaleState(dict(target)))
            self.scale_state = None  # restored: nothing left to undo
            ready = platform_tasks.wait_ready(self.cfg, target, self.cfg.platform.ready_timeout_s)
            s.detail = ", ".join(f"{n} {ready.get(n, 0)}/{r} ready" for n, r in target.items())

    def describe_backup(self, entry: BackupEntry) -> str:
        m = entry.manifest
        self.recovery_point = m.consistent_at
        return (
            f"{m.backup_id} (taken {utc(m.consistent_at)}, "
            f"{old((datetime.now(UTC) - m.consistent_at).total_seconds())}, "
            f"in {', '.join(entry.location_names())})"
        )

    # ---- the whole recovery --------------------------------------------------------------------

    def execute(
        self, steps: Callable[[], tuple[datetime, list[str]]], *, keep_down: bool, started: str
    ) -> State[Any]:
        """Run a scenario's ``steps`` under the environment lock: notify the start, then
        succeed with the (healthy time, final state) they return, or take the failure path."""
        with self.recovery_lock():
            self.optional(
                "Notify on-call",
                "Notify team and stakeholders",
                None if self.cfg.notifications else "no [[notifications]] configured",
                lambda: self.open_incident(started),
            )
            try:
                healthy_at, final_state = steps()
            except Exception as exc:  # the failure path restores the scale and reports
                return self.fail(exc, keep_down=keep_down)
            return self.succeed(healthy_at, final_state)

    # ---- endings ------------------------------------------------------------------------------

    def measurement(self, healthy_at: datetime | None) -> Measurement:
        return Measurement(
            self.cfg.objectives,
            self.started_at,
            healthy_at,
            self.incident_at or self.started_at,
            self.recovery_point,
        )

    def succeed(self, healthy_at: datetime, final_state: list[str]) -> State[Any]:
        m = self.measurement(healthy_at)
        self.report.measurement = m
        missed = [n for n, ok in (("RTO", m.rto_met), ("RPO", m.rpo_met)) if ok is False]
        self.report.outcome = "recovered" + (f", {' and '.join(missed)} MISSED" if missed else "")
        self.report.final_state = final_state
        return self._finish(Completed if not missed else Failed)

    def fail(self, exc: BaseException, *, keep_down: bool) -> State[Any]:
        """The failure path: put workloads back (unless told not to), say where things are."""
        rejected = isinstance(exc, Rejected)
        self.report.outcome = ("stopped: " if rejected else "FAILED: ") + redact(str(exc))
        self.report.measurement = self.measurement(None)  # RTO not reached: the clock says so
        if self.scale_state is not None and not keep_down:
            previous = dict(self.scale_state.replicas)
            try:
                self.start_workloads(previous, name="Restore the previous scale")
                self.report.final_state.append(
                    "workloads back at their previous scale: "
                    + ", ".join(f"{n}={r}" for n, r in previous.items())
                )
            except Exception as undo_exc:
                self.report.final_state.append(
                    f"could NOT restore the previous scale ({redact(str(undo_exc))}); set it by "
                    "hand: " + ", ".join(f"{n}={r}" for n, r in previous.items())
                )
        elif self.scale_state is not None:
            self.report.final_state.append(
                "workloads left at 0 (keep_down_on_failure); previous scale: "
                + ", ".join(f"{n}={r}" for n, r in self.scale_state.replicas.items())
            )
        return self._finish(Cancelled if rejected else Failed)

    def _finish(self, state_cls: Any) -> State[Any]:
        self.publish_checklist()
        self.publish_report()
        m = self.report.measurement
        summary = {
            "scenario": self.scenario,
            "outcome": self.report.outcome,
            "rto_s": m.rto_s if m else None,
            "rpo_s": m.rpo_s if m else None,
            "report": self.report.to_markdown(),
        }
        self.close_incident(f"{self.scenario}: {self.report.outcome}", self.report.to_markdown())
        state: State[Any] = state_cls(message=self.report.outcome, data=summary)
        return state


def _show(value: Any) -> str:
    """A parameter as the report shows it: models as their non-default fields."""
    if isinstance(value, BaseModel):
        fields = value.model_dump(mode="json", exclude_defaults=True)
        return ", ".join(f"{k}={v}" for k, v in fields.items()) or "default"
    if isinstance(value, (list, tuple)):
        return "; ".join(_show(v) for v in value)
    return str(value)
