"""The recovery steps the scenarios share, in the runbook's words. Each function is a list of
``run.step`` blocks over tasks; the scenario flows put them in their own order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.states import State

from flows._scenario import BackupChoice, BackupStrategy, ScenarioRun
from tasks import database as db_tasks
from tasks import health as health_tasks
from tasks import platform as platform_tasks
from tasks.core.catalog import BackupEntry
from tasks.core.config import CriticalQuery
from tasks.core.errors import ConfigError, DRError, VerificationFailed

__all__ = [
    "as_utc",
    "assess_corruption",
    "plan_only",
    "recover_database",
    "restore_from_backup",
    "select",
    "verify_service",
]


def select(
    run: ScenarioRun, database: str, choice: BackupChoice, before: datetime | None = None
) -> BackupEntry:
    """Identify the recovery point: the chosen backup, or the newest good one before ``before``
    (the incident, deletion or breach time)."""
    if choice.strategy is BackupStrategy.backup_id and not choice.backup_id:
        raise ConfigError("backup.strategy is backup_id but backup.backup_id is empty")
    if choice.strategy is BackupStrategy.before and choice.before is None:
        raise ConfigError("backup.strategy is before but backup.before is empty")
    limit = as_utc(choice.before if choice.strategy is BackupStrategy.before else before)
    with run.step("Select the backup", "Identify recovery point") as s:
        entry = db_tasks.select_backup(
            run.cfg,
            database,
            backup_id=choice.backup_id if choice.strategy is BackupStrategy.backup_id else None,
            before=limit,
        )
        s.detail = run.describe_backup(entry)
        run.report.backup = s.detail
    return entry


def restore_from_backup(
    run: ScenarioRun,
    database: str,
    entry: BackupEntry,
    *,
    confirm: bool,
    approval_timeout_s: int,
    assessment: Sequence[str] = (),
    extra_checks: Sequence[CriticalQuery] = (),
    on_reject: str = "the workloads go back to their previous scale",
    approval: bool = True,
) -> None:
    """Approval (unless already given: ``confirm``) -> safe restore (side copy, verify,
    switch) -> verify the live data."""
    approver = "approved earlier in the scenario"
    if approval:
        with run.step("Approval") as s:
            plan = db_tasks.plan_restore(run.cfg, database, entry)
            approver = run.approve(
                [*assessment, *plan.describe()],
                confirm=confirm,
                timeout_s=approval_timeout_s,
                on_reject=on_reject,
            )
            s.detail = "approved by " + approver
    with run.step("Restore the database", "Restore database") as s:
        if not approval:  # approved earlier in the scenario, before anything else changed
            plan = db_tasks.plan_restore(run.cfg, database, entry)
        result = db_tasks.restore_database(run.cfg, plan, f"{run.scenario}: {approver}")
        if result.roles_created:
            run.report.final_state.append(
                "roles created WITHOUT a password (set them before the application can log "
                f"in): {', '.join(result.roles_created)}"
            )
        s.detail = f"{entry.backup_id} from {result.source} in {result.duration_s:.1f}s; " + (
            f"previous database kept as {result.kept_as}"
            if result.kept_as
            else "target did not exist before"
        )
        if result.kept_as:
            run.report.final_state.append(
                f"previous database kept as {result.kept_as} (drop it once the incident is closed)"
            )
    with run.step("Verify the data", "Verify services") as s:
        checks = db_tasks.verify_counts(run.cfg, database, entry, list(extra_checks))
        run.report.checks.extend(checks)
        bad = [c.name for c in checks if not c.ok]
        s.detail = f"{len(checks) - len(bad)}/{len(checks)} checks passed"
        if bad:
            raise VerificationFailed(f"checks failed after the restore: {', '.join(bad[:5])}")


def recover_database(
    run: ScenarioRun,
    database: str,
    choice: BackupChoice,
    *,
    confirm: bool,
    approval_timeout_s: int,
    amcheck: bool,
    before: datetime | None = None,
    extra_checks: Sequence[CriticalQuery] = (),
) -> None:
    """Identify the backup, stop the application, assess the database, restore it, start the
    application again. The backup is chosen first: a database or backup that does not exist
    fails the run before anything is stopped."""
    workloads = [w.name for w in run.cfg.platform.workloads]
    run.cfg.database(database)
    entry = select(run, database, choice, before)
    run.stop_workloads(workloads)
    assessment = assess_corruption(run, database) if amcheck else []
    restore_from_backup(
        run,
        database,
        entry,
        confirm=confirm,
        approval_timeout_s=approval_timeout_s,
        assessment=assessment,
        extra_checks=extra_checks,
    )
    run.start_workloads()


def assess_corruption(run: ScenarioRun, database: str) -> list[str]:
    """Connectivity, SELECT 1 and pg_amcheck: lines for the approval request."""
    assessment: list[str] = []
    with run.step("Confirm the corruption", "Assess situation and scope") as s:
        check = db_tasks.check_database(run.cfg, database)
        select_one = "ok" if check.select_one else "failed"
        s.detail = f"reachable={check.reachable}, SELECT 1 {select_one}, amcheck: {check.amcheck}"
        assessment.append(f"assessment: {s.detail}")
        if check.healthy:
            assessment.append("NOTE: no corruption was detected; restore only if you are sure")
    return assessment


def verify_service(run: ScenarioRun) -> datetime:
    """Health-check every configured URL until healthy (the end of the RTO clock)."""
    if not run.cfg.health:
        run.skip(
            "Health check",
            "Verify services",
            "not configured",
            "no health URLs in the config: readiness of the workloads is the last signal",
        )
        return datetime.now(UTC)
    with run.step("Health check", "Verify services") as s:
        results = health_tasks.check_health(run.cfg)
        s.detail = "; ".join(f"{r.url}: {'healthy' if r.healthy else r.detail}" for r in results)
        if not all(r.healthy for r in results):
            raise VerificationFailed(
                f"the application did not become healthy within "
                f"{run.cfg.health_deadline_s:g}s: {s.detail}"
            )
    return datetime.now(UTC)


def plan_only(
    run: ScenarioRun,
    database: str,
    choice: BackupChoice,
    before: datetime | None = None,
    extra: Sequence[str] = (),
    stops_workloads: bool = True,
) -> State[Any]:
    """``dry_run``: resolve everything, publish the plan, change nothing."""
    workloads = [w.name for w in run.cfg.platform.workloads]
    lines = [f"# {run.scenario}: dry run (nothing changed)", ""]
    if workloads and stops_workloads:
        replicas = platform_tasks.current_replicas(run.cfg, workloads)
        lines.append("* stop: " + ", ".join(f"{n} (now {r})" for n, r in replicas.items()))
    entry = select(run, database, choice, before)
    try:
        lines += [
            f"* {line}" for line in db_tasks.plan_restore(run.cfg, database, entry).describe()
        ]
    except DRError as exc:  # e.g. infrastructure loss: the new server does not exist yet
        lines.append(
            f"* restore {entry.backup_id} into {run.cfg.database(database).url or '?'}"
            f" (target not reachable now: {exc})"
        )
    lines += [f"* {line}" for line in extra]
    lines.append(f"* expected RTO: {_expected_rto(run)}")
    return run.publish_plan(lines)


def as_utc(t: datetime | None, *, what: str = "the incident time") -> datetime | None:
    """A parameter time in UTC (a time without zone is UTC, as everywhere in dr); refuses a time
    in the future, which would silently pick the newest backup and miss the RPO."""
    if t is None:
        return None
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    if t > datetime.now(UTC) + timedelta(minutes=5):
        raise ConfigError(
            f"{what} {t:%Y-%m-%dT%H:%M:%SZ} is in the future: give the UTC time of the incident"
        )
    return t.astimezone(UTC)


def _expected_rto(run: ScenarioRun) -> str:
    """From the last drill (else the last restore test) recorded for this environment."""
    from tasks.core.environment import build_catalog
    from tasks.core.history import read_history

    try:
        records = read_history(build_catalog(run.cfg).locations)
    except DRError:
        records = []
    for kind in ("drill", "restore-test"):
        for r in records:
            if r.kind == kind and r.rto_s is not None:
                return (
                    f"{r.rto_s / 60:.1f} min, measured by the {kind} of "
                    f"{r.started_at:%Y-%m-%d %H:%M}Z ({r.target})"
                )
    return "no restore test or drill has been recorded yet for this environment"
