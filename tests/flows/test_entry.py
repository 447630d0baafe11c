"""The `dr` console script starts `dr redis backup`'s snapshot before its heavy imports: the
backup is the same, errors are word for word what they were, and a command that fails leaves
no connection behind. (The buffer's bound: tests/core/test_redis_sync.py.)"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from flows.entry import redis_backup_url
from tasks.core.pgcluster import free_port
from tests.conftest import DR, REPO, run_dr
from tests.redis_server import RedisProcess
from tests.relay import Relay, close_all

MIB = 1 << 20


def replicas(server: RedisProcess) -> str:
    listing: bytes = server.client().execute_command("CLIENT", "LIST", "TYPE", "replica")
    return listing.decode()


def full_syncs(server: RedisProcess) -> int:
    return int(server.client().info("stats")["sync_full"])


def test_the_entry_point_imports_no_heavy_module() -> None:
    code = (
        "import sys, flows.entry\n"
        "heavy = {'typer', 'rich', 'pydantic', 'redis', 'zstandard', 'boto3', 'prefect'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m == 'flows.cli'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "env", "url"),
    [
        (["redis", "backup", "--redis-url", "redis://a/0"], {}, "redis://a/0"),
        (["redis", "backup", "--redis-url=redis://a/0", "--json"], {}, "redis://a/0"),
        (
            ["redis", "backup", "--redis-url", "redis://a", "--redis-url", "redis://b"],
            {},
            "redis://b",
        ),
        (["redis", "backup", "--backup-dir", "x"], {"REDIS_URL": "redis://e/0"}, "redis://e/0"),
        (["redis", "backup", "--redis-url", "redis://a"], {"REDIS_URL": "redis://e"}, "redis://a"),
        (["redis", "backup", "--config", "dr.toml"], {"REDIS_URL": "redis://e"}, "redis://e"),
        (["redis", "backup", "--config", "dr.toml"], {}, None),  # the config's: not read here
        (["redis", "backup", "--redis-url", ""], {"REDIS_URL": "redis://e"}, None),  # config's
        (["redis", "backup"], {"REDIS_URL": ""}, None),
        (["redis", "backup", "--redis-url", "redis://a", "--help"], {}, None),
        (["redis", "backup", "--", "--redis-url", "redis://a"], {}, None),
        (["redis", "restore", "--redis-url", "redis://a"], {}, None),
        (["backup", "--redis-url", "redis://a"], {"REDIS_URL": "redis://e"}, None),
    ],
)
def test_the_url_is_the_one_the_command_will_use(
    args: list[str], env: dict[str, str], url: str | None
) -> None:
    assert redis_backup_url(args, env) == url


class Watching(Relay):
    """Relays to Redis and notes, for every connection, whether `dr` (process ``pid``) had
    loaded pydantic (its C core) when it connected."""

    def __init__(self, upstream_port: int) -> None:
        self.pid = 0
        self.pid_known = threading.Event()
        self.pydantic_loaded: list[bool] = []
        super().__init__(upstream_port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        self.pid_known.wait(10)
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        self.pydantic_loaded.append("_pydantic_core" in maps)
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
        _pipe(upstream, client)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        close_all(src, dst)


@pytest.fixture
def watching(redis_server: RedisProcess) -> Iterator[Watching]:
    relay = Watching(redis_server.port)
    yield relay
    relay.close()


@pytest.mark.parametrize("how", ["flag", "environment", "config"])
def test_the_snapshot_starts_before_the_heavy_imports(
    redis_server: RedisProcess, watching: Watching, tmp_path: Path, how: str
) -> None:
    c = redis_server.client()
    c.mset({f"k{i}": i for i in range(100)})
    c.set("ttl", "x", ex=3600)
    redis_server.client(2).set("other", "db")
    args = ["redis", "backup", "--backup-dir", str(tmp_path / "b"), "--json"]
    env = {**os.environ, "REDIS_URL": ""}
    if how == "flag":
        args += ["--redis-url", watching.url]
    elif how == "environment":
        env["REDIS_URL"] = watching.url
    else:  # known only once the config is read: no head start
        (tmp_path / "dr.toml").write_text(f'[redis]\nurl = "{watching.url}"\n')
        args += ["--config", str(tmp_path / "dr.toml")]
    syncs = full_syncs(redis_server)
    proc = subprocess.Popen([DR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    watching.pid = proc.pid
    watching.pid_known.set()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["keys"] == {"db0": 101, "db2": 1}
    assert summary["expiring"] == {"db0": 1, "db2": 0}
    assert summary["counts_exact"] is True
    manifest = json.loads((tmp_path / "b" / summary["backup_id"] / "manifest.json").read_text())
    started, consistent = (
        datetime.fromisoformat(manifest[k]) for k in ("started_at", "consistent_at")
    )
    assert started <= consistent  # the backup began with the head start
    assert full_syncs(redis_server) == syncs + 1  # one snapshot, the one started first
    # the SYNC connection, then redis-py's for INFO after it
    assert watching.pydantic_loaded == [how == "config", True]
    verify = run_dr("redis", "verify", "--backup-dir", str(tmp_path / "b"))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[RedisProcess]:
    """A server with a password and an ACL user that may not SYNC."""
    server = RedisProcess(tmp_path / "locked", password="right-pw").start()
    acl = ["ACL", "SETUSER", "reader", "on", ">r3ader-pw", "~*", "+@read", "+info"]
    server.client().execute_command(*acl)
    yield server
    server.stop()


# word for word what `dr redis backup` said before the head start
@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            ":wrong-pw@",
            "cannot snapshot redis://127.0.0.1:{port}/0: invalid username-password pair or user "
            "is disabled. (check the user and password)",
        ),
        (
            "",
            "cannot snapshot redis://127.0.0.1:{port}/0: HELLO must be called with the client "
            "already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to "
            "authenticate the client and select the RESP protocol version at the same time "
            "(check the user and password)",
        ),
        (
            "reader:r3ader-pw@",
            "cannot snapshot redis://reader@127.0.0.1:{port}/0: the server refused SYNC: -NOPERM "
            "this user has no permissions to run the 'sync' command (an ACL user needs +sync "
            "+replconf +info)",
        ),
    ],
)
def test_refusals_are_reported_as_before(
    locked: RedisProcess, tmp_path: Path, auth: str, message: str
) -> None:
    url = f"redis://{auth}127.0.0.1:{locked.port}/0"
    r = run_dr("redis", "backup", "--redis-url", url, "--backup-dir", str(tmp_path / "b"))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"dr: error: {message.format(port=locked.port)}\n"
    assert replicas(locked) == ""


def test_an_unreachable_server_is_reported_as_before(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:pw@127.0.0.1:{port}/0"
    r = run_dr("redis", "backup", "--redis-url", url, "--backup-dir", str(tmp_path / "b"))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"dr: error: cannot snapshot redis://127.0.0.1:{port}/0: Redis unreachable: "
        f"Error 111 connecting to 127.0.0.1:{port}. Connection refused.\n"
    )


def _file_size_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (MIB, MIB))  # writes past 1 MiB fail: disk full


@pytest.mark.parametrize("failure", ["backup dir is a file", "disk full"])
def test_a_failed_backup_leaves_no_connection_behind(
    redis_server: RedisProcess, tmp_path: Path, failure: str
) -> None:
    pipe = redis_server.client().pipeline(transaction=False)
    for i in range(8):
        pipe.set(f"big:{i}", os.urandom(MIB))
    pipe.execute()
    backups = tmp_path / "backups"
    if failure == "backup dir is a file":
        backups.write_text("")
    syncs = full_syncs(redis_server)
    proc = subprocess.run(
        [DR, "redis", "backup", "--redis-url", redis_server.url, "--backup-dir", str(backups)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_file_size_limit if failure == "disk full" else None,
    )
    if failure == "backup dir is a file":
        assert (proc.returncode, proc.stderr) == (
            2,
            f"dr: error: backup dir {backups} exists and is not a directory\n",
        )
    else:
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"dr: error: backup not stored in {backups}: ")
        assert "File too large" in proc.stderr
    assert full_syncs(redis_server) == syncs + 1  # the head start began the snapshot ...
    assert replicas(redis_server) == ""  # ... and the failure ended it
