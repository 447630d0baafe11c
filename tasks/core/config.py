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
from urllib.parse import quote

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
    "CommunicationConfig",
    "Config",
    "CriticalQuery",
    "DatabaseConfig",
    "DnsConfig",
    "DnsRecord",
    "HealthCheck",
    "MonitoringConfig",
    "Notification",
    "Objectives",
    "PitrConfig",
    "PlatformConfig",
    "RedisConfig",
    "RetentionConfig",
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
    s3_sse: Literal["AES256", "aws:kms"] | None = None  # server-side encryption on every write
    s3_kms_key_id: str | None = None  # with s3_sse = "aws:kms"; default: the account's key
    require_immutable: bool = False  # verification fails unless a copy is under Object Lock
    versioned_buckets: tuple[str, ...] = ()  # must have versioning (the runbook's models bucket)

    @model_validator(mode="after")
    def _kms(self) -> StorageConfig:
        if self.s3_kms_key_id and self.s3_sse != "aws:kms":
            raise ValueError('s3_kms_key_id needs s3_sse = "aws:kms"')
        return self


class EncryptionConfig(_Model):
    """Client-side encryption of every backup artefact (docs/security.md). The key is never in
    the file: it is read from an environment variable or a Prefect Secret block."""

    key_env: str | None = None
    key_block: str | None = None  # flows only: the dr CLI runs without a Prefect server

    @model_validator(mode="after")
    def _one_source(self) -> EncryptionConfig:
        if (self.key_env is None) == (self.key_block is None):
            raise ValueError("give exactly one of key_env or key_block")
        return self


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
        if v is not None:
            try:
                parse_database_url(v)  # a malformed URL fails when the file is read
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
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


class RetentionConfig(_Model):
    """The runbook's "Backup Retention Policy" (GFS tiers per location kind, in days; 0: the tier
    keeps nothing there). Replaces ``storage.retention_days`` when present. docs/retention.md."""

    local_daily_days: int = Field(7, ge=0)
    local_weekly_days: int = Field(30, ge=0)
    local_monthly_days: int = Field(0, ge=0)
    s3_daily_days: int = Field(30, ge=0)
    s3_weekly_days: int = Field(90, ge=0)
    s3_monthly_days: int = Field(365, ge=0)
    redis_days: int = Field(7, ge=0)  # engine "redis" backups, in every location


class MonitoringConfig(_Model):
    """Thresholds of the hourly backup monitor (runbook "Monitoring & Alerting")."""

    failed_runs: int = Field(2, ge=1)  # alert when this many backup runs in a row failed
    size_change_pct: float = Field(20, gt=0)  # ... when size leaves median(previous) +- this
    size_baseline: int = Field(7, ge=1)  # ... the median over this many previous good backups
    max_backup_age_hours: float = Field(26, gt=0)  # ... when the newest good backup is older
    textfile_dir: Path | None = None  # the monitor also writes dr.prom here (node-exporter)


class CommunicationConfig(_Model):
    """The runbook's "Communication Plan": when each audience is told (docs/communication.md)."""

    engineering_after_minutes: float = Field(15, ge=0)
    management_after_minutes: float = Field(30, ge=0)
    users_after_downtime_minutes: float = Field(60, ge=0)
    check_every_minutes: float = Field(5, gt=0)  # the escalation deployment's period


class PitrConfig(_Model):
    """Physical backups and point-in-time recovery through pgBackRest (docs/pitr.md)."""

    stanza: str = Field("main", pattern=r"^[A-Za-z0-9_.-]+$")
    database: str | None = None  # the [[databases]] entry on this server (default: the first)
    data_dir: Path  # the server's data directory (restores go next to it, never into it)
    bin_dir: Path | None = None  # where pg_ctl is (default: the installed PostgreSQL)
    os_user: str = "postgres"  # the server's OS user: pgBackRest and pg_ctl run as it
    port: int | None = Field(None, ge=1, le=65535)  # default: the database URL's port
    socket_dir: Path | None = None  # default: pgBackRest's (/var/run/postgresql)
    config_dir: Path = Path("/var/lib/pgbackrest-dr")  # pgbackrest.conf, log, lock, spool
    repo_path: Path | None = None  # a repository on a local path (restores come from it first)
    s3: bool = False  # a repository in [storage].s3_bucket under s3_prefix
    s3_prefix: str = "pgbackrest"
    s3_endpoint: str = "s3.amazonaws.com"
    s3_port: int = Field(443, ge=1, le=65535)
    s3_region: str = "us-east-1"
    s3_uri_style: Literal["host", "path"] = "host"
    s3_verify_tls: bool = True
    s3_key_env: str = "AWS_ACCESS_KEY_ID"  # written to pgbackrest.conf (mode 0600), never argv
    s3_secret_env: str = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a variable name, not a value
    window_days: int = Field(7, ge=1)  # the recoverable window pgBackRest retention keeps
    archive_timeout_s: int = Field(60, ge=1)  # bounds the data-loss window (RPO)
    process_max: int | None = Field(None, ge=1)  # default: the CPU count
    alter_system: bool = True  # may set archive_command with ALTER SYSTEM + reload
    ready_timeout_s: float = Field(600, gt=0)  # recovery to the target, start, promotion
    kubernetes_pod: str | None = None  # documented, not automated: see docs/pitr.md
    kubernetes_container: str | None = None

    @model_validator(mode="after")
    def _a_repository(self) -> PitrConfig:
        if self.repo_path is None and not self.s3:
            raise ValueError("give repo_path and/or s3 = true: pgBackRest needs a repository")
        return self


class RedisConfig(_Model):
    """The environment's Redis (``[redis]``): how to reach it, how the tool controls it for a
    restore, and which workloads write to it. docs/redis.md."""

    name: str = Field("redis", pattern=r"^[A-Za-z0-9_.-]+$")  # backups are listed under it
    url: str | None = None  # redis:// or rediss://, without password; or:
    url_env: str = "REDIS_URL"  # the variable holding the full URL (used when url is unset)
    password_env: str | None = None  # with url: the variable holding the password
    # runbook "Redis Backups": 7 days; [retention] redis_days replaces it when present
    retention_days: int = Field(7, ge=1)
    writers: tuple[str, ...] = ()  # workloads stopped during a restore (platform.workloads)
    # how a restore reaches the data: "local" = a redis-server process on this machine that
    # the tool may stop and start with ``command``; "kubernetes" = the pod of ``workload`` in
    # [platform]'s cluster and namespace (exec + tar, args); "none" = only through the URL
    # (key by key, ``--mode keys``); docs/redis.md
    control: Literal["local", "kubernetes", "none"] = "none"
    command: tuple[str, ...] = ()  # local: how the server is started (config file, flags)
    workload: str | None = None  # kubernetes: the StatefulSet/Deployment running Redis
    workload_kind: Literal["StatefulSet", "Deployment"] = "StatefulSet"
    container: str | None = None  # kubernetes: its container (default: the first)
    ready_timeout_s: float = Field(300, gt=0)

    @field_validator("url")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v is not None and redact(v) != v:
            raise ValueError(
                "contains a password: keep it out of the file (use url_env or password_env)"
            )
        return v

    @model_validator(mode="after")
    def _controllable(self) -> RedisConfig:
        if self.control == "local" and not self.command:
            raise ValueError("control = 'local' needs command (how the server is started)")
        if self.control == "kubernetes" and not self.workload:
            raise ValueError("control = 'kubernetes' needs workload (the Redis StatefulSet)")
        return self

    def resolve_url(self) -> str:
        """The Redis URL with its password (a secret: never print it; see dburl.redact)."""
        raw = self.url or os.environ.get(self.url_env, "")
        if not raw:
            raise ConfigError(
                f"redis {self.name!r}: no URL: set {self.url_env} or give url in the config"
            )
        if self.url and self.password_env:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(f"redis {self.name!r}: {self.password_env} is not set")
            scheme, sep, rest = raw.partition("://")
            user, _, host = rest.rpartition("@")  # no user: ":password@host"
            raw = f"{scheme}{sep}{user}:{quote(password, safe='')}@{host}"
        return raw


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
    retention: RetentionConfig | None = None
    monitoring: MonitoringConfig = MonitoringConfig()
    communication: CommunicationConfig = CommunicationConfig()
    pitr: PitrConfig | None = None
    redis: RedisConfig | None = None
    encryption: EncryptionConfig | None = None

    @model_validator(mode="after")
    def _pitr_bucket(self) -> Config:
        if self.pitr is not None and self.pitr.s3 and not self.storage.s3_bucket:
            raise ValueError("pitr.s3 = true needs [storage] s3_bucket (the same bucket)")
        return self

    @model_validator(mode="after")
    def _unique_targets(self) -> Config:
        names = [d.name for d in self.databases]
        if len(set(names)) != len(names):
            raise ValueError("[[databases]] names must be unique")
        if self.redis is not None and self.redis.name in names:
            raise ValueError(
                f"[redis] name {self.redis.name!r} is also a [[databases]] name: run history and "
                "alerts are kept per name, give Redis another one"
            )
        return self

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
    pitr = cfg.pitr and cfg.pitr.model_copy(
        update={
            k: fix(getattr(cfg.pitr, k))
            for k in ("data_dir", "bin_dir", "socket_dir", "config_dir", "repo_path")
        }
    )
    monitoring = cfg.monitoring.model_copy(
        update={"textfile_dir": fix(cfg.monitoring.textfile_dir)}
    )
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
    return cfg.model_copy(
        update={"storage": storage, "platform": platform, "monitoring": monitoring, "pitr": pitr}
    )
