"""Secret rotation as a Prefect task. Only key names are returned or logged, never values."""

from __future__ import annotations

from tasks._base import audited, dr_task
from tasks.core import secrets
from tasks.core.config import Config
from tasks.core.environment import open_platform


@dr_task()
def rotate_secrets(cfg: Config, database: str) -> secrets.RotationResult:
    assert cfg.secrets is not None
    url = cfg.database(database).resolve_url() if cfg.secrets.database_role else None
    sc = cfg.secrets
    target = ", ".join(
        [f"Secret {sc.kubernetes_secret} keys {', '.join(sc.rotate_keys) or '-'}"]
        * bool(sc.kubernetes_secret)
        + [f"role {sc.database_role}"] * bool(sc.database_role)
    )
    with audited(cfg, "rotate-secret", target), open_platform(cfg) as platform:
        return secrets.rotate_secrets(cfg.secrets, platform, url)
