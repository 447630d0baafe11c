"""Redis in the scheduled and scenario flows: the nightly backup snapshots it, the
infrastructure-loss scenario restores it after the database (writers stopped meanwhile)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.infrastructure_loss import infrastructure_loss
from flows.nightly_backup import nightly_backup
from tasks.core.config import load_config
from tasks.core.environment import build_catalog
from tests.core.fake_backups import put_backup
from tests.flows.conftest import AppEnv, artifacts
from tests.redis_server import RedisProcess


@pytest.fixture
def redis_env(app_env: AppEnv, tmp_path: Path) -> Iterator[tuple[AppEnv, RedisProcess]]:
    server = RedisProcess(tmp_path / "redis", ["--appendonly", "yes"]).start()
    c = server.client()
    c.set("session:1", "alive", ex=3600)
    c.rpush("queue", *range(100))
    server.client(1).set("cache", "warm")
    app_env.write_config(
        redis=(
            f'[redis]\nurl = "redis://127.0.0.1:{server.port}/0"\ncontrol = "local"\n'
            f'command = {json.dumps(server.command)}\nwriters = ["backend"]\n'
        )
    )
    yield app_env, server
    server.stop()


def test_nightly_backup_snapshots_redis_and_infrastructure_loss_restores_it(
    redis_env: tuple[AppEnv, RedisProcess],
) -> None:
    env, server = redis_env
    state = nightly_backup(config=str(env.config), return_state=True)
    assert state.is_completed(), state.message
    rows = {r["database"]: r for r in artifacts(state)["nightly-backup"]}
    assert rows["redis"]["ok"], rows["redis"]
    assert "RDB and checksums verified" in rows["redis"]["detail"]

    server.client().flushall()  # the cache is lost with the infrastructure
    state = infrastructure_loss(config=str(env.config), confirm=True, return_state=True)
    assert state.is_completed(), state.message
    report = artifacts(state)["infrastructure-loss-report"]
    assert "Restore Redis" in report
    assert "(server mode): db0=2, db1=1, AOF rewritten" in report
    assert server.client().get("cache") is None
    assert server.client(1).get("cache") == b"warm"
    assert server.client().llen("queue") == 100
    assert 3500 < server.client().ttl("session:1") <= 3600
    assert env.replicas() == 3  # the writers run again


def test_with_tiered_retention_the_nightly_redis_policy_is_redis_days(
    redis_env: tuple[AppEnv, RedisProcess],
) -> None:
    """[retention] redis_days replaces [redis] retention_days in the nightly flow: a snapshot
    3 days old survives a night whose [redis] says 1 day but whose tiers say 7."""
    env, _ = redis_env
    text = env.config.read_text().replace("[redis]\n", "[redis]\nretention_days = 1\n")
    env.config.write_text(text + "\n[retention]\nredis_days = 7\n")
    cfg = load_config(env.config)
    catalog = build_catalog(cfg)
    old = put_backup(
        catalog.locations, "redis", datetime.now(UTC) - timedelta(days=3), engine="redis"
    )
    state = nightly_backup(config=str(env.config), return_state=True)
    assert state.is_completed(), state.message
    kept = {e.backup_id for e in catalog.list("redis").backups}
    assert old in kept  # the 7-day tiers decided, not the 1-day age policy
    assert len(kept) == 2  # and tonight's snapshot
