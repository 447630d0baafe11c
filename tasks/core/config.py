"""One environment, described in one TOML file (``dr.toml``; ``--config`` or ``DR_CONFIG``).

The file names everything a recovery touches: databases, backup locations, the platform and its
workloads, health URLs, DNS records, secrets to rotate, critical queries, objectives and
notification targets. It never holds a secret: database URLs with a password are refused, and
passwords come from the environment variable a database names (``url_env``). An invalid file
fails with one line naming the key. docs/configuration.md documents every key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.core.dburl import DatabaseURL, parse_database_url, redact
from tasks.core.errors import ConfigError

__all__ = [
    "Config",
    "CriticalQuery",
    "DatabaseConfig",
    "DnsConfig",
    "DnsRecord",
    "HealthCheck",
    "Notification",
    "Objectives",
    "PlatformConfig",
    "SecretsConfig",
    "StorageConfig",
    "Workload",
    "load_config",
]

Audience = Literal["on-call", "engineering", "management", "users", "stakeholders"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objectives(_Model):
    """Recovery objectives from the runbook; every scenario and drill is measured against them."""

    rto_minutes: float = Field(60, gt=0)
    rpo_minutes: float = Field(15, gt=0)


class StorageConfig(_Model):
    backup_dir: Path = Path("backups")
    s3_bucket: str | None = None
    s3_prefix: str = "database-backups"
    retention_days: int | None = Field(30, ge=1)


class CriticalQuery(_Model):
    """A query whose first column of the first row must lie in [min, max] after a restore."""

    name: str
    sql: str
    min: float | None = 1
    max: float | None = None


class DatabaseConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str | None = None  # without password; or:
    url_env: str = "DATABASE_URL"  # the variable holding the full URL (used when url is unset)
    password_env: str | None = None  # with url: the variable holding the password
    critical_queries: tuple[CriticalQuery, ...] = ()
    # restore tests: the variable holding a server URL to restore into (default: the database's
    # own server, in a throwaway database named <name>_dr_test_<id>)
    scratch_url_env: str | None = None

    @field_validator("url")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v is not None and redact(v) != v:
            raise ValueError(
                "contains a password: keep it out of the file (use url_env or password_env)"
            )
        return v

    def scratch_server(self) -> str | None:
        if self.scratch_url_env is None:
            return None
        value = os.environ.get(self.scratch_url_env)
        if not value:
            raise ConfigError(f"database {self.name!r}: {self.scratch_url_env} is not set")
        return value

    def resolve_url(self) -> DatabaseURL:
        """The database URL with its password, from the file and the environment."""
        raw = self.url or os.environ.get(self.url_env, "")
        if not raw:
            raise ConfigError(
                f"database {self.name!r}: no URL: set {self.url_env} or give url in the config"
            )
        url = parse_database_url(raw)
        if self.url and self.password_env:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(f"database {self.name!r}: {self.password_env} is not set")
            url = url.with_password(password)
        return url


class Workload(_Model):
    name: str
    kind: Literal["Deployment", "StatefulSet", "process"] = "Deployment"
    replicas: int = Field(1, ge=0)  # the replicas it runs with in normal operation
    command: tuple[str, ...] = ()  # local platform: how to start it
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    health_url: str | None = None


class PlatformConfig(_Model):
    kind: Literal["local", "kubernetes"] = "local"
    namespace: str = "default"
    kubeconfig: Path | None = None  # None: in-cluster config, or ~/.kube/config
    context: str | None = None
    manifests_dir: Path | None = None  # applied with server-side apply on infrastructure loss
    terraform_dir: Path | None = None
    state_dir: Path = Path(".dr-state")  # local platform: pids, logs, secret env files
    ready_timeout_s: float = Field(600, gt=0)
    workloads: tuple[Workload, ...] = ()

    @field_validator("workloads")
    @classmethod
    def _unique(cls, v: tuple[Workload, ...]) -> tuple[Workload, ...]:
        names = [w.name for w in v]
        if len(names) != len(set(names)):
            raise ValueError("workload names must be unique")
        return v


class HealthCheck(_Model):
    url: str
    expect_status: int = 200
    timeout_s: float = Field(5, gt=0)


class DnsRecord(_Model):
    name: str
    type: Literal["A", "AAAA", "CNAME"] = "CNAME"
    value: str
    ttl: int = Field(60, ge=1)


class DnsConfig(_Model):
    zone_id: str
    records: tuple[DnsRecord, ...]
    wait_insync_s: float = 300


class SecretsConfig(_Model):
    kubernetes_secret: str | None = None  # the Secret the application reads
    rotate_keys: tuple[str, ...] = ()  # keys given new random values (JWT secret, API keys, ...)
    database_role: str | None = None  # ALTER ROLE ... PASSWORD for this role
    database_password_key: str = "DATABASE_PASSWORD"  # noqa: S105 - a key name, not a value


class Notification(_Model):
    """One notification target: exactly one of ``block`` or ``webhook_url_env``."""

    audience: Audience = "on-call"
    block: str | None = None  # a Prefect notification block, "<type>/<name>": "slack-webhook/dr"
    webhook_url_env: str | None = None  # or a plain webhook whose URL is in this variable

    @model_validator(mode="after")
    def _one_target(self) -> Notification:
        if (self.block is None) == (self.webhook_url_env is None):
            raise ValueError("give exactly one of block or webhook_url_env")
        return self


class Config(_Model):
    environment: str = "local"
    objectives: Objectives = Objectives()
    storage: StorageConfig = StorageConfig()
    databases: tuple[DatabaseConfig, ...] = (DatabaseConfig(name="main"),)
    platform: PlatformConfig = PlatformConfig()
    health: tuple[HealthCheck, ...] = ()
    health_deadline_s: float = Field(300, gt=0)
    dns: DnsConfig | None = None
    secrets: SecretsConfig | None = None
    notifications: tuple[Notification, ...] = ()

    def database(self, name: str | None = None) -> DatabaseConfig:
        if name is None:
            return self.databases[0]
        for db in self.databases:
            if db.name == name:
                return db
        raise ConfigError(
            f"no database named {name!r} in the config (have: "
            f"{', '.join(d.name for d in self.databases)})"
        )


def load_config(path: Path | str | None = None) -> Config:
    """Read ``path`` (or ``$DR_CONFIG``); with neither, the embedded local defaults."""
    chosen = path if path is not None else os.environ.get("DR_CONFIG")
    if not chosen:
        return Config()
    p = Path(chosen).expanduser()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{p}: {key}: {msg}") from None
    return _relative_to(cfg, p.resolve().parent)


def _relative_to(cfg: Config, base: Path) -> Config:
    """Relative paths in the file are relative to the file, not to the current directory."""

    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else base / p

    storage = cfg.storage.model_copy(update={"backup_dir": fix(cfg.storage.backup_dir)})
    plat = cfg.platform
    platform = plat.model_copy(
        update={
            "kubeconfig": fix(plat.kubeconfig) if plat.kubeconfig else None,
            "manifests_dir": fix(plat.manifests_dir),
            "terraform_dir": fix(plat.terraform_dir),
            "state_dir": fix(plat.state_dir),
            "workloads": tuple(w.model_copy(update={"cwd": fix(w.cwd)}) for w in plat.workloads),
        }
    )
    return cfg.model_copy(update={"storage": storage, "platform": platform})
