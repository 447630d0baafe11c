"""Monitoring, retention and the communication plan as Prefect tasks (the logic is in
tasks/core/monitor.py, retention.py, comms.py and metrics.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from tasks._base import dr_task
from tasks.core import comms, metrics, monitor, retention
from tasks.core.config import Config
from tasks.core.dburl import redact
from tasks.core.environment import build_catalog
from tasks.core.errors import DRError
from tasks.notify import deliver


def flow_run_url() -> str | None:
    """The current flow run in the Prefect UI, when there is a run and a UI URL is known."""
    run_id = flow_run.get_id()
    ui = PREFECT_UI_URL.value()
    return f"{ui}/runs/flow-run/{run_id}" if run_id and ui else None


def _store(cfg: Config) -> comms.IncidentStore:
    """Open incidents live in the catalog's first location (docs/communication.md)."""
    return comms.IncidentStore(build_catalog(cfg).locations[0])


def _send(cfg: Config) -> comms.Send:
    def send(audience: str, subject: str, body: str) -> bool:
        if not any(t.audience == audience for t in cfg.notifications):
            get_run_logger().info("nobody configured for %s: %s", audience, subject)
            return True  # nobody to tell: asking again every 5 minutes would change nothing
        return bool(deliver(cfg, f"[DR {cfg.environment}] {subject}", body, (audience,)))

    return send


@dr_task(retries=2)
def evaluate_alerts(
    cfg: Config, now: datetime, wal_age_s: dict[str, float] | None = None
) -> tuple[monitor.Facts, list[monitor.Alert]]:
    """Read the catalog and the history once; every alert rule over them."""
    facts = monitor.gather(cfg)
    alerts = monitor.evaluate(
        facts.targets,
        facts.backups,
        facts.history,
        now,
        cfg.monitoring,
        cfg.objectives,
        wal_age_s,
    )
    return facts, alerts


@dr_task()
def wal_ages(cfg: Config, now: datetime) -> dict[str, float] | None:
    """Per database on the ``[pitr]`` server, the age of the newest WAL in the pgBackRest
    repository; None without ``[pitr]`` or before the first physical backup."""
    if cfg.pitr is None:
        return None
    from tasks.core.pitr import open_pitr, recoverable_window  # pgBackRest only when configured

    try:
        window = recoverable_window(cfg, now)
    except DRError as exc:  # the other rules still run; the run log says why this one did not
        get_run_logger().warning("WAL age unknown, wal-stale not checked: %s", redact(str(exc)))
        return None
    if window.newest_wal_age_s is None:
        return None
    return {name: window.newest_wal_age_s for name, _ in open_pitr(cfg).databases}


@dr_task()
def reconcile_alerts(
    cfg: Config, alerts: list[monitor.Alert], now: datetime, run_url: str | None
) -> tuple[list[monitor.Alert], list[str]]:
    """Open incidents for new alerts (on-call told once), resolve the cleared ones."""
    return monitor.reconcile(
        _store(cfg),
        alerts,
        now,
        comms.Timing.from_config(cfg.communication),
        _send(cfg),
        environment=cfg.environment,
        run_url=run_url,
    )


@dr_task()
def escalate_incidents(cfg: Config, now: datetime) -> list[tuple[str, str]]:
    """Tell the audiences now due for every open incident: (incident, audience) told."""
    return comms.escalate(_store(cfg), now, comms.Timing.from_config(cfg.communication), _send(cfg))


@dr_task()
def open_incident(cfg: Config, incident: comms.Incident, now: datetime) -> list[str]:
    """Open a (scenario) incident and tell who is due at once; returns the audiences told."""
    opened = comms.open_incident(
        _store(cfg), incident, now, comms.Timing.from_config(cfg.communication), _send(cfg)
    )
    return list(opened.told)


@dr_task()
def resolve_incident(
    cfg: Config, key: str, subject: str, body: str, now: datetime
) -> list[str] | None:
    """Announce the end to everyone told and close it; None when no such incident is open."""
    closed = comms.resolve(_store(cfg), key, subject, now, _send(cfg), lambda _: (subject, body))
    return None if closed is None else list(closed.told)


@dr_task()
def write_metrics(
    cfg: Config, facts: monitor.Facts, alerts: list[monitor.Alert], now: datetime, where: Path
) -> Path:
    """The metrics for node-exporter's textfile collector, written atomically."""
    reg = metrics.registry(
        lambda: metrics.families(facts, alerts, cfg.objectives, cfg.environment, now)
    )
    return metrics.write_textfile(reg, where)


@dr_task(retries=2)
def apply_retention(cfg: Config, now: datetime) -> list[retention.Decision]:
    """The tiered policy of ``[retention]``, planned and applied (manifest first, per location)."""
    assert cfg.retention is not None
    catalog = build_catalog(cfg)
    listing = catalog.list()
    policy = retention.TieredPolicy.from_config(cfg.retention)
    decisions = retention.decide(catalog, listing.backups, policy, now)
    retention.apply(catalog, listing.backups, decisions, now=now)
    return decisions
