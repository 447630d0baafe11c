"""Infrastructure steps (manifests, terraform, DNS) as Prefect tasks."""

from __future__ import annotations

from tasks._base import dr_task
from tasks.core import dns, provision
from tasks.core.config import Config
from tasks.core.environment import open_platform


@dr_task(retries=2)
def apply_manifests(cfg: Config) -> list[str]:
    """Server-side apply of the configured manifests directory; returns Kind/name applied."""
    assert cfg.platform.manifests_dir is not None
    with open_platform(cfg) as platform:
        return platform.apply_manifests(cfg.platform.manifests_dir)


@dr_task()
def run_terraform(cfg: Config) -> str:
    assert cfg.platform.terraform_dir is not None
    return provision.terraform_apply(cfg.platform.terraform_dir)


@dr_task(retries=2)
def update_dns(cfg: Config) -> dns.DnsChange:
    """Route53 UPSERT of the configured records, waiting for INSYNC."""
    assert cfg.dns is not None
    return dns.update_dns(cfg.dns)
