"""The physical recovery steps the scenarios share when ``[pitr]`` is configured: pgBackRest
restores the server to a point in time (data loss: just before the deletion) or to its latest
archived state (corruption), in a new data directory, verified before the switch-over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect.states import State

from flows._scenario import ScenarioRun
from tasks import pitr as pitr_tasks
from tasks.core.config import CriticalQuery
from tasks.core.errors import VerificationFailed
from tasks.core.pitr import Target

__all__ = ["plan_only_pitr", "recover_point_in_time"]


def recover_point_in_time(
    run: ScenarioRun,
    database: str,
    target: Target,
    *,
    confirm: bool,
    approval_timeout_s: int,
    extra_checks: Sequence[CriticalQuery] = (),
    assessment: Sequence[str] = (),
) -> None:
    """Stop the application, plan against the recoverable window, approval, restore (new data
    directory, recover, verify, switch over), verify the live data, start the application."""
    run.stop_workloads([w.name for w in run.cfg.platform.workloads])
    with run.step("Identify the recovery point", "Identify recovery point") as s:
        plan = pitr_tasks.plan_pitr(run.cfg, target)
        s.detail = f"point in time: {target.describe()}; {plan.window.describe()}"
        run.report.backup = s.detail
        run.recovery_point = target.time if target.kind == "time" else plan.window.latest
    with run.step("Approval") as s:
        s.detail = "approved by " + run.approve(
            [*assessment, *plan.describe()], confirm=confirm, timeout_s=approval_timeout_s
        )
    with run.step("Restore the database", "Restore database") as s:
        result = pitr_tasks.pitr_restore(run.cfg, plan, list(extra_checks))
        if result.reached is not None and target.kind != "time":
            run.recovery_point = result.reached  # the last transaction actually replayed
        run.report.checks.extend(result.checks)
        s.detail = (
            f"pgBackRest point-in-time restore to {target.describe()}: restore "
            f"{result.restore_s:.1f}s, recovery {result.recover_s:.1f}s, accepts writes after "
            f"{result.writable_s:.1f}s; previous data directory kept as {result.kept_as}"
        )
        run.report.final_state.append(
            f"previous data directory kept as {result.kept_as} (remove it once the incident "
            "is closed); take a new full backup: `dr backup --physical`"
        )
    with run.step("Verify the data", "Verify services") as s:
        checks = pitr_tasks.check_live(run.cfg, database, list(extra_checks))
        run.report.checks.extend(checks)
        bad = [c.name for c in checks if not c.ok]
        s.detail = f"{len(checks) - len(bad)}/{len(checks)} checks passed on the live server"
        if bad:
            raise VerificationFailed(f"checks failed after the switch-over: {', '.join(bad[:5])}")
    run.start_workloads()


def plan_only_pitr(run: ScenarioRun, target: Target) -> State[Any]:
    """``dry_run`` with pgBackRest: the target checked against the window, nothing changed."""
    plan = pitr_tasks.plan_pitr(run.cfg, target)
    workloads = [w.name for w in run.cfg.platform.workloads]
    lines = [f"# {run.scenario}: dry run (nothing changed)", ""]
    if workloads:
        lines.append("* stop: " + ", ".join(workloads))
    lines += [f"* {line}" for line in plan.describe()]
    return run.publish_plan(lines)
