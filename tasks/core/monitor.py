"""Backup monitoring (runbook "Monitoring & Alerting"): alert rules over run history and the
catalog, and the incidents they open and resolve.

Each rule is a pure function of its facts and ``now``; ``evaluate`` runs them all for an
environment. ``reconcile`` turns the firing alerts into incidents of the communication plan
(tasks/core/comms.py): an alert opens an incident once, is escalated like any incident while it
lasts, and is resolved (announced to everyone told) when its condition clears, so a condition
that lasts for days pages once, not every hour. docs/monitoring.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tasks.core.catalog import BackupEntry
from tasks.core.comms import Incident, IncidentStore, Send, Timing, open_incident, resolve
from tasks.core.config import Config, MonitoringConfig, Objectives
from tasks.core.environment import build_catalog
from tasks.core.errors import ConfigError
from tasks.core.history import Record, read_history
from tasks.core.units import age, size

__all__ = [
    "ALERT_PREFIX",
    "Alert",
    "Facts",
    "Target",
    "backup_runs_failed",
    "backup_stale",
    "evaluate",
    "gather",
    "objective_missed",
    "reconcile",
    "size_anomaly",
    "targets",
    "wal_stale",
]

ALERT_PREFIX = "alert:"

# what on-call reads under "What is being done" for each rule
_ACTIONS = {
    "backup-failing": "nothing automatic: the next nightly backup runs at 02:00 UTC; "
    "on-call looks at the failed runs (dr status, the nightly-backup run)",
    "backup-size": "nothing automatic: on-call checks whether the data really changed that much "
    "(a bulk delete? a failed dump that still committed?)",
    "backup-stale": "nothing automatic: on-call takes a backup now (dr backup) and finds why "
    "the nightly one did not run",
    "objective-missed": "nothing automatic: the recovery procedure needs to get faster or "
    "the objective needs review",
    "wal-stale": "nothing automatic: on-call checks WAL archiving (pgBackRest archive-push)",
}


@dataclass(frozen=True)
class Target:
    name: str  # the database's config name (history records use it)
    source: str  # the database name its backups are filed under (manifest.database)
    engine: str | None = None  # "redis" for [redis]; None: any SQL engine

    def owns(self, entry: BackupEntry) -> bool:
        """Whether ``entry`` is a backup of this target (a Redis named like a database is
        not mistaken for it)."""
        m = entry.manifest
        return m.database == self.source and (
            m.engine == "redis" if self.engine == "redis" else m.engine != "redis"
        )


@dataclass(frozen=True)
class Alert:
    rule: str  # backup-failing, backup-size, backup-stale, objective-missed, wal-stale
    target: str
    summary: str

    @property
    def key(self) -> str:
        return f"{ALERT_PREFIX}{self.rule}:{self.target}"


@dataclass(frozen=True)
class Facts:
    """What the rules and the metrics read: one listing of the catalog and of the history."""

    targets: list[Target]
    backups: list[BackupEntry]  # newest first
    history: list[Record]  # newest first


def targets(cfg: Config) -> list[Target]:
    """What is watched: every ``[[databases]]`` entry, then ``[redis]`` when configured."""
    out = []
    for db in cfg.databases:
        try:
            source = db.resolve_url().dbname
        except ConfigError:  # URL not resolvable here: backups are filed under the db name
            source = db.name
        out.append(Target(db.name, source))
    if cfg.redis is not None:  # snapshots filed, and runs recorded, under [redis] name
        out.append(Target(cfg.redis.name, cfg.redis.name, "redis"))
    return out


def gather(cfg: Config) -> Facts:
    """Read the environment's catalog and run history once."""
    catalog = build_catalog(cfg)
    return Facts(targets(cfg), catalog.list().backups, read_history(catalog.locations))


# ---- the rules ----------------------------------------------------------------------------------


def backup_runs_failed(runs: Sequence[Record], target: str, in_a_row: int = 2) -> Alert | None:
    """The last ``in_a_row`` backup runs of ``target`` (history, newest first) all failed."""
    mine = [r for r in runs if r.kind == "backup" and r.target == target][:in_a_row]
    if len(mine) < in_a_row or any(r.ok for r in mine):
        return None
    return Alert(
        "backup-failing",
        target,
        f"the last {in_a_row} backup runs of {target} failed; "
        f"last: {mine[0].detail or 'no detail'}",
    )


def size_anomaly(
    backups: Sequence[BackupEntry], target: str, pct: float = 20, baseline: int = 7
) -> Alert | None:
    """The newest good backup (newest first) differs by more than ``pct`` % from the median of
    the ``baseline`` good backups before it; needs at least 3 of them to have a baseline."""
    good = [e for e in backups if e.good]
    if len(good) < 4:
        return None
    newest, previous = good[0], good[1 : 1 + baseline]
    median = statistics.median(e.manifest.size for e in previous)
    if median <= 0:
        return None
    change = (newest.manifest.size - median) / median * 100
    if abs(change) <= pct:
        return None
    return Alert(
        "backup-size",
        target,
        f"backup {newest.backup_id} is {size(newest.manifest.size)}, {change:+.0f} % from the "
        f"median {size(int(median))} of the previous {len(previous)} (limit ±{pct:g} %)",
    )


def backup_stale(
    backups: Sequence[BackupEntry], target: str, now: datetime, max_age: timedelta
) -> Alert | None:
    """No good backup of ``target`` younger than ``max_age`` (backups newest first)."""
    newest = next((e for e in backups if e.good and e.manifest.consistent_at <= now), None)
    if newest is None:
        return Alert("backup-stale", target, f"no good backup of {target} at all")
    age_s = (now - newest.manifest.consistent_at).total_seconds()
    if age_s <= max_age.total_seconds():
        return None
    return Alert(
        "backup-stale",
        target,
        f"the newest good backup of {target} ({newest.backup_id}) is {age_s / 3600:.1f} h old "
        f"(limit {max_age.total_seconds() / 3600:g} h)",
    )


def objective_missed(record: Record | None) -> Alert | None:
    """The latest restore test or drill (``record``) missed its RTO or RPO objective."""
    if record is None:
        return None
    missed = [
        f"{name} {value / 60:.1f} min > {objective / 60:g} min"
        for name, met, value, objective in (
            ("RTO", record.rto_met, record.rto_s, record.rto_objective_s),
            ("RPO", record.rpo_met, record.rpo_s, record.rpo_objective_s),
        )
        if met is False and value is not None and objective is not None
    ]
    if not missed:
        return None
    return Alert(
        "objective-missed",
        f"{record.kind} {record.target}",
        f"the last {record.kind} of {record.target} ({record.started_at:%Y-%m-%d}) missed: "
        + ", ".join(missed),
    )


def wal_stale(wal_age_s: float | None, rpo_s: float, target: str) -> Alert | None:
    """The newest archived WAL is older than the RPO (only when PITR reports its age)."""
    if wal_age_s is None or wal_age_s <= rpo_s:
        return None
    return Alert(
        "wal-stale",
        target,
        f"the newest archived WAL of {target} is {age(wal_age_s)} old (RPO {age(rpo_s)}): "
        "point-in-time recovery would lose more than the objective",
    )


def evaluate(
    targets: Sequence[Target],
    backups: Sequence[BackupEntry],
    history: Sequence[Record],
    now: datetime,
    thresholds: MonitoringConfig,
    objectives: Objectives,
    wal_age_s: dict[str, float] | None = None,
) -> list[Alert]:
    """Every firing alert of the environment. ``backups`` and ``history`` newest first;
    ``wal_age_s``: target name -> age of its newest archived WAL, when PITR is set up."""
    alerts: list[Alert | None] = []
    for t in targets:
        mine = [e for e in backups if t.owns(e)]
        alerts += [
            backup_runs_failed(history, t.name, thresholds.failed_runs),
            size_anomaly(mine, t.name, thresholds.size_change_pct, thresholds.size_baseline),
            backup_stale(mine, t.name, now, timedelta(hours=thresholds.max_backup_age_hours)),
            objective_missed(
                next((r for r in history if r.kind == "restore-test" and r.target == t.name), None)
            ),
            wal_stale((wal_age_s or {}).get(t.name), objectives.rpo_minutes * 60, t.name),
        ]
    alerts.append(objective_missed(next((r for r in history if r.kind == "drill"), None)))
    return [a for a in alerts if a is not None]


# ---- alerts -> incidents ------------------------------------------------------------------------


def reconcile(
    store: IncidentStore,
    alerts: Sequence[Alert],
    now: datetime,
    timing: Timing,
    send: Send,
    *,
    environment: str,
    run_url: str | None = None,
) -> tuple[list[Alert], list[str]]:
    """Open an incident for each new alert, resolve those whose condition cleared; returns
    (alerts newly fired, names of incidents resolved). An alert still firing stays quiet here
    (the escalation check tells the next audiences)."""
    firing = {a.key: a for a in alerts}
    already = {i.key for i in store.open_incidents() if i.key.startswith(ALERT_PREFIX)}
    fired = []
    for key, a in firing.items():
        if key in already:
            continue
        open_incident(
            store,
            Incident(
                key=key,
                name=f"{a.rule} {a.target}",
                title=f"ALERT {a.rule} {a.target}: {a.summary}",
                environment=environment,
                opened_at=now,
                what_happened=a.summary,
                being_done=_ACTIONS.get(a.rule, "on-call investigates"),
                run_url=run_url,
            ),
            now,
            timing,
            send,
        )
        fired.append(a)
    resolved = []
    for key in sorted(already - set(firing)):
        closed = resolve(store, key, "resolved, the condition cleared", now, send)
        if closed is not None:
            resolved.append(closed.name)
    return fired, resolved
