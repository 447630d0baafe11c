"""dr.toml: valid files load with paths relative to the file; invalid ones fail in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.config import Config, load_config
from tasks.core.errors import ConfigError

PRODUCTION = """
environment = "production"

[objectives]
rto_minutes = 60
rpo_minutes = 15

[storage]
backup_dir = "backups"
s3_bucket = "cryptoorchestrator-backups"

[[databases]]
name = "main"
url = "postgresql://app@db.internal:5432/cryptoorchestrator"
password_env = "APP_DB_PASSWORD"
critical_queries = [
  { name = "users", sql = "SELECT count(*) FROM users" },
  { name = "trades", sql = "SELECT count(*) FROM trades", min = 0 },
]

[platform]
kind = "kubernetes"
namespace = "cryptoorchestrator"
manifests_dir = "k8s"
workloads = [
  { name = "backend", kind = "Deployment", replicas = 3 },
  { name = "redis", kind = "StatefulSet", replicas = 1 },
]

[[health]]
url = "https://api.cryptoorchestrator.com/health"

[dns]
zone_id = "Z0123456789"
records = [{ name = "api.cryptoorchestrator.com", value = "lb-new.example.com" }]

[secrets]
kubernetes_secret = "cryptoorchestrator-secrets"
rotate_keys = ["JWT_SECRET", "API_KEY", "ENCRYPTION_KEY"]
database_role = "app"

[[notifications]]
audience = "on-call"
block = "dr-oncall"
"""


def test_production_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dr.toml"
    path.write_text(PRODUCTION)
    cfg = load_config(path)
    assert cfg.environment == "production"
    assert cfg.storage.backup_dir == tmp_path / "backups"
    assert cfg.platform.manifests_dir == tmp_path / "k8s"
    assert [w.replicas for w in cfg.platform.workloads] == [3, 1]
    monkeypatch.setenv("APP_DB_PASSWORD", "s3cret")
    url = cfg.database("main").resolve_url()
    assert "password=s3cret" in url.conninfo
    assert "s3cret" not in str(url)


def test_dr_config_env_var_and_embedded_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DR_CONFIG", raising=False)
    assert load_config() == Config()
    assert Config().objectives.rto_minutes == 60
    assert Config().objectives.rpo_minutes == 15
    path = tmp_path / "x.toml"
    path.write_text('environment = "staging"\n')
    monkeypatch.setenv("DR_CONFIG", str(path))
    assert load_config().environment == "staging"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("environment = 3", "environment: Input should be a valid string"),
        ("[objectives]\nrto_minutes = -1", "objectives.rto_minutes: Input should be greater"),
        ("[storage]\nretention_days = 'ten'", "storage.retention_days: Input should be a valid"),
        ("colour = 'blue'", "colour: Extra inputs are not permitted"),
        (
            '[[databases]]\nname = "m"\nurl = "postgresql://app:pw@h/db"',
            "databases.0.url: contains a password",
        ),
        ("[platform]\nkind = 'nomad'", "platform.kind: Input should be 'local' or 'kubernetes'"),
        (
            "[platform]\nworkloads = [{name='a'},{name='a'}]",
            "platform.workloads: workload names must be unique",
        ),
        ("[dns]\nrecords = []", "dns.zone_id: Field required"),
        ("environment = ", "not valid TOML"),
        ("[[notifications]]\naudience = 'on-call'", "give exactly one of block or webhook_url_env"),
        (
            '[[databases]]\nname = "a"\n[[databases]]\nname = "a"',
            "[[databases]] names must be unique",
        ),
        (
            '[[databases]]\nname = "cache"\n[redis]\nname = "cache"',
            "[redis] name 'cache' is also a [[databases]] name",
        ),
    ],
)
def test_invalid_file_fails_in_one_line_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "dr.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    assert "pw@" not in str(info.value)


def test_missing_file_and_missing_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigError, match="no URL: set DATABASE_URL"):
        Config().database().resolve_url()
    with pytest.raises(ConfigError, match="no database named 'x'"):
        Config().database("x")
