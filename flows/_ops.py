"""What the scheduled flows share: one line per result in a table artifact, history records,
and the rule that a failed or objective-missing run fails loudly and notifies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed, State

from tasks import backup as backup_tasks
from tasks import notify as notify_tasks
from tasks.core.config import Config
from tasks.core.history import Kind, Record

__all__ = ["finish", "record"]


def record(
    cfg: Config,
    kind: Kind,
    target: str,
    started_at: datetime,
    ok: bool,
    detail: str,
    **figures: Any,
) -> Record:
    rec = Record(
        kind=kind,
        environment=cfg.environment,
        target=target,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        ok=ok,
        detail=detail,
        **figures,
    )
    backup_tasks.record_run(cfg, rec)
    return rec


def finish(
    cfg: Config,
    name: str,
    rows: Sequence[dict[str, Any]],
    failures: Sequence[str],
    evidence: str | None = None,
) -> State[Any]:
    """Publish the run's table (and evidence report), notify on failure, end the run."""
    create_table_artifact(key=name, table=list(rows), description=f"{name}: one row per target")
    if evidence:
        create_markdown_artifact(
            key=f"{name}-evidence", markdown=evidence, description=f"{name}: evidence report"
        )
    if failures:
        message = f"{name} FAILED: " + "; ".join(failures)
        get_run_logger().error(message)
        if cfg.notifications:
            notify_tasks.notify(cfg, f"[DR {cfg.environment}] {name} failed", message)
        return Failed(message=message, data={"rows": list(rows), "evidence": evidence})
    return Completed(
        message=f"{name}: {len(rows)} ok", data={"rows": list(rows), "evidence": evidence}
    )
