"""Runbook "Monitoring & Alerting", every hour: the alert rules over the run history and the
catalog; a new alert opens an incident (on-call is told once), a cleared one is resolved and
announced to everyone who was told. The metrics go to node-exporter's textfile directory when
``[monitoring] textfile_dir`` is set. docs/monitoring.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, State

from tasks import monitor as monitor_tasks
from tasks.core.config import load_config


@flow(name="backup-monitor", log_prints=True)
def backup_monitor(config: str = "", wal_age_s: dict[str, float] | None = None) -> State[Any]:
    """Check every alert rule; notify new and resolved alerts.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
        wal_age_s: per database, the age in seconds of its newest archived WAL (default: asked
            from pgBackRest when [pitr] is configured)
    """
    cfg = load_config(config or None)
    now = datetime.now(UTC)
    if wal_age_s is None and cfg.pitr is not None:
        wal_age_s = monitor_tasks.wal_ages(cfg, now)
    facts, alerts = monitor_tasks.evaluate_alerts(cfg, now, wal_age_s)
    fired, resolved = monitor_tasks.reconcile_alerts(cfg, alerts, now, monitor_tasks.flow_run_url())
    if cfg.monitoring.textfile_dir is not None:
        monitor_tasks.write_metrics(cfg, facts, alerts, now, cfg.monitoring.textfile_dir)
    new = {a.key for a in fired}
    rows = [
        {"rule": a.rule, "target": a.target, "new": a.key in new, "summary": a.summary}
        for a in alerts
    ]
    rows += [{"rule": name, "target": "", "new": False, "summary": "RESOLVED"} for name in resolved]
    create_table_artifact(
        key="backup-monitor", table=rows, description="backup-monitor: alerts firing now"
    )
    message = (
        f"{len(alerts)} alert(s) firing ({len(fired)} new), {len(resolved)} resolved"
        if alerts or resolved
        else "all backup checks pass"
    )
    get_run_logger().info(message)
    # the run itself succeeded: the alerts reach people through the communication plan
    return Completed(
        message=message,
        data={"alerts": [a.key for a in alerts], "fired": sorted(new), "resolved": resolved},
    )
