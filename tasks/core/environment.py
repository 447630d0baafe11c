"""From a config to the live objects of an environment: its backup catalog and its platform."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tasks.core.catalog import Catalog
from tasks.core.config import Config
from tasks.core.platform import Platform
from tasks.core.storage import Storage
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.s3 import S3Storage

__all__ = ["build_catalog", "build_platform", "open_platform"]


def build_catalog(cfg: Config) -> Catalog:
    """The local directory first (fast reads), then S3 when a bucket is configured."""
    locations: list[Storage] = [LocalStorage(cfg.storage.backup_dir)]
    if cfg.storage.s3_bucket:
        locations.append(S3Storage(cfg.storage.s3_bucket, cfg.storage.s3_prefix))
    return Catalog(locations)


def build_platform(cfg: Config) -> Platform:
    p = cfg.platform
    if p.kind == "kubernetes":
        from tasks.core.platform.kubernetes import KubernetesPlatform

        kinds = {w.name: w.kind for w in p.workloads if w.kind != "process"}
        return KubernetesPlatform(
            p.namespace,
            kinds,
            kubeconfig=p.kubeconfig,
            context=p.context,
        )
    from tasks.core.platform.local import LocalPlatform, LocalWorkload

    return LocalPlatform(
        p.state_dir,
        [
            LocalWorkload(
                name=w.name,
                command=list(w.command),
                cwd=w.cwd,
                env=dict(w.env),
                health_url=w.health_url,
            )
            for w in p.workloads
        ],
    )


@contextlib.contextmanager
def open_platform(cfg: Config) -> Iterator[Platform]:
    """The platform for one step, with its API client closed afterwards."""
    platform = build_platform(cfg)
    try:
        yield platform
    finally:
        close = getattr(platform, "close", None)
        if close is not None:
            close()
