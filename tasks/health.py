"""Health checks as a Prefect task."""

from __future__ import annotations

from tasks._base import dr_task
from tasks.core import health
from tasks.core.config import Config


@dr_task()
def check_health(cfg: Config) -> list[health.HealthResult]:
    """Probe every configured URL until healthy or the configured deadline."""
    return health.check_health(cfg.health, deadline_s=cfg.health_deadline_s)
