"""From a config to the live objects of an environment: its backup catalog and its platform."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tasks.core.catalog import Catalog
from tasks.core.config import Config
from tasks.core.crypto import EncryptionKey
from tasks.core.errors import ConfigError
from tasks.core.platform import Platform
from tasks.core.storage import Storage
from tasks.core.storage.local import LocalStorage

__all__ = [
    "SECRET_BLOCK_READER",
    "build_catalog",
    "build_locations",
    "build_platform",
    "encryption_key",
    "open_platform",
]


# How a Prefect Secret block is read: the task layer (tasks/_base.py) registers it; the core
# never imports Prefect, and the dr CLI (no server) supports [encryption] key_env only.
SECRET_BLOCK_READER: Callable[[str], str] | None = None


def build_catalog(cfg: Config) -> Catalog:
    """The local directory first (fast reads), then S3 when a bucket is configured; with the
    [encryption] key when one is configured."""
    return Catalog(build_locations(cfg), encryption_key(cfg))


def build_locations(cfg: Config) -> list[Storage]:
    s = cfg.storage
    locations: list[Storage] = [LocalStorage(s.backup_dir)]
    if s.s3_bucket:
        from tasks.core.storage.s3 import S3Storage  # boto3 costs 0.1 s to import: on use

        locations.append(
            S3Storage(s.s3_bucket, s.s3_prefix, sse=s.s3_sse, kms_key_id=s.s3_kms_key_id)
        )
    return locations


def encryption_key(cfg: Config) -> EncryptionKey | None:
    """The configured encryption key; ConfigError when it is configured but not available."""
    enc = cfg.encryption
    if enc is None:
        return None
    if enc.key_env:
        key = EncryptionKey.from_env(enc.key_env)
        if key is None:
            raise ConfigError(
                f"[encryption] key_env: ${enc.key_env} is not set (backups of this environment "
                "are encrypted; generate a key with: openssl rand -base64 32)"
            )
        return key
    assert enc.key_block is not None
    if SECRET_BLOCK_READER is None:
        raise ConfigError(
            f"[encryption] key_block {enc.key_block!r} is read by the Prefect flows only: "
            "use key_env for the dr command"
        )
    return EncryptionKey.from_text(SECRET_BLOCK_READER(enc.key_block), f"block {enc.key_block}")


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
