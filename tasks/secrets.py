"""Secret rotation as a Prefect task. Only key names are returned or logged, never values."""

from __future__ import annotations

from tasks._base import dr_task
from tasks.core import secrets
from tasks.core.config import Config
from tasks.core.environment import open_platform


@dr_task()
def rotate_secrets(cfg: Config, database: str) -> secrets.RotationResult:
    assert cfg.secrets is not None
    url = cfg.database(database).resolve_url() if cfg.secrets.database_role else None
    with open_platform(cfg) as platform:
        return secrets.rotate_secrets(cfg.secrets, platform, url)
