"""Runbook "Communication Plan", every 5 minutes: every open incident (a scenario still running,
an alert still firing) is escalated to the audiences now due: engineering within 15 minutes,
management within 30, users once downtime exceeds an hour. Why a schedule and not a Prefect
Automation: docs/communication.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import Completed, State

from tasks import monitor as monitor_tasks
from tasks.core.config import load_config


@flow(name="escalation", log_prints=True)
def escalation(config: str = "") -> State[Any]:
    """Tell the next audiences of every unresolved incident.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
    """
    cfg = load_config(config or None)
    told = monitor_tasks.escalate_incidents(cfg, datetime.now(UTC))
    message = "; ".join(f"{name}: told {audience}" for name, audience in told) or "nobody due"
    return Completed(message=message, data={"told": told})
