"""`dr redis` as a user runs it: backup, listing next to database backups, verify, consent,
restore in both modes, exit codes and no password in any output."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_dr
from tests.redis_server import RedisProcess

PASSWORD = "cli-s3cret-pw"


@pytest.fixture
def source(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "source", password=PASSWORD).start()
    c = server.client()
    c.set("k", "v")
    c.hset("h", mapping={"a": "1"})
    c.set("t", "x", ex=3600)
    server.client(1).set("other", "db")
    yield server
    server.stop()


def _dr(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_dr(*args, "--backup-dir", str(tmp_path / "backups"), cwd=tmp_path, env=env)


def test_backup_list_verify_and_restore_key_by_key(source: RedisProcess, tmp_path: Path) -> None:
    r = _dr(tmp_path, "redis", "backup", "--redis-url", source.url, "--json")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert PASSWORD not in out
    summary = json.loads(r.stdout)
    assert summary["engine"] == "redis"
    assert summary["keys"] == {"db0": 3, "db1": 1}
    assert summary["expiring"] == {"db0": 1, "db1": 0}
    assert summary["role"] == "master"
    assert summary["appendonly"] is False
    backup_id = summary["backup_id"]

    listing = _dr(tmp_path, "restore", "--list", "--json")
    assert listing.returncode == 0
    [row] = json.loads(listing.stdout)
    assert (row["backup_id"], row["engine"], row["database"]) == (backup_id, "redis", "redis")
    plain = _dr(tmp_path, "restore", "--list")
    assert "redis" in plain.stdout

    for args in (("redis", "verify"), ("backup", "--verify-only")):
        v = _dr(tmp_path, *args, "--json")
        assert v.returncode == 0, v.stdout
        [result] = json.loads(v.stdout)["results"]
        assert result["status"] == "OK"
        assert "CRC64 ok" in result["detail"]

    target = RedisProcess(tmp_path / "target").start()
    try:
        target.client().set("k", "before")
        # no --confirm: the plan, exit 2, nothing changed
        plan = _dr(
            tmp_path, "redis", "restore", "--redis-url", target.url, "--latest", "--mode", "keys"
        )
        assert plan.returncode == 2, plan.stderr
        assert "restore plan (nothing changed)" in plan.stdout
        assert backup_id in plan.stdout
        assert "add --confirm" in plan.stderr
        assert target.client().get("k") == b"before"

        done = _dr(
            tmp_path,
            "redis",
            "restore",
            "--redis-url",
            target.url,
            "--backup-id",
            backup_id,
            "--mode",
            "keys",
            "--confirm",
            "--json",
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert {c["db"]: c["actual"] for c in result["counts"]} == {"db0": 3, "db1": 1}
        assert target.client().get("k") == b"v"
        assert target.client(1).get("other") == b"db"
        assert 3500 < target.client().ttl("t") <= 3600
    finally:
        target.stop()


def test_restore_into_the_configured_server(source: RedisProcess, tmp_path: Path) -> None:
    r = _dr(tmp_path, "redis", "backup", "--redis-url", source.url)
    assert r.returncode == 0, r.stderr
    assert "4 keys in 2 db(s)" in r.stdout
    source.client().flushall()
    config = tmp_path / "dr.toml"
    command = json.dumps(source.command)
    config.write_text(
        f'[redis]\nurl = "redis://127.0.0.1:{source.port}/0"\npassword_env = "REDIS_PW"\n'
        f'control = "local"\ncommand = {command}\n'
    )
    env = {"REDIS_PW": PASSWORD, "REDIS_URL": ""}
    no = _dr(tmp_path, "redis", "restore", "--config", str(config), "--latest", env=env)
    assert no.returncode == 2
    assert "move its RDB and AOF aside" in no.stdout
    assert source.client().dbsize() == 0

    yes = _dr(
        tmp_path, "redis", "restore", "--config", str(config), "--latest", "--confirm", env=env
    )
    assert yes.returncode == 0, yes.stderr
    assert PASSWORD not in yes.stdout + yes.stderr
    assert "db0=3" in yes.stdout
    assert source.client().get("k") == b"v"
    assert source.client(1).get("other") == b"db"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["redis", "backup", "--redis-url", "http://x"], 2, "not a Redis URL"),
        (["redis", "backup", "--redis-url", "redis://:pw-in-url@127.0.0.1:1/0"], 1, "unreachable"),
        (["redis", "verify"], 1, "no Redis backups"),
        (["redis", "restore", "--redis-url", "redis://127.0.0.1:1/0"], 2, "choose exactly one"),
        (
            ["redis", "restore", "--redis-url", "redis://127.0.0.1:1/0", "--latest"],
            1,
            "no good Redis backup",
        ),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    r = _dr(tmp_path, *args, env={"REDIS_URL": ""})
    assert r.returncode == code, (r.stdout, r.stderr)
    stderr = r.stderr.strip()
    assert len(stderr.splitlines()) == 1, stderr
    assert message in stderr
    assert "pw-in-url" not in stderr
