"""Redis rows of the reliability matrix (docs/reliability.md): real `dr redis` processes, real
redis-server processes, real signals. Each test records what a user saw (``fault.outcome``)
before asserting it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.core.catalog import Catalog
from tasks.core.redis_backup import REDIS_ARTEFACT, backup_redis, parse_redis_url
from tasks.core.storage.local import LocalStorage
from tests.conftest import DR, run_dr
from tests.faults.conftest import Fault, wait_for
from tests.faults.test_faults import _files, _fsize_limit, _one_error_line
from tests.redis_server import RedisProcess
from tests.relay import Relay

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20
# 1 MiB random values: a snapshot zstd cannot shrink, large enough that the half held back does
# not fit in the socket buffers (up to 32 + 4 MiB): the server is still sending when dr, which
# starts the transfer before its imports, catches up with the held half
SNAPSHOT_KEYS = 80


def _fill_big(server: RedisProcess) -> None:
    pipe = server.client().pipeline(transaction=False)
    for i in range(SNAPSHOT_KEYS):
        pipe.set(f"big:{i}", os.urandom(MIB))
    pipe.set("marker", "original")
    pipe.execute()


@pytest.fixture
def dr() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``dr(*args, **popen_kw)`` starts a real `dr` process; any still running at the end
    (a failed test) is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **kw: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [DR, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,  # type: ignore[call-overload]
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _listed(backups: Path) -> list[dict[str, object]]:
    r = run_dr("restore", "--list", "--json", "--backup-dir", str(backups))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _partial_artefacts(backups: Path) -> list[Path]:
    """Artefacts still being written (the local storage's temporary files), with content."""
    return [p for p in backups.glob("*/.tmp-*") if p.stat().st_size > 0] if backups.exists() else []


# ---- a network that stalls: the snapshot held half-way -------------------------------------


class HoldingProxy(Relay):
    """A TCP relay in front of Redis that holds the server's answer on a connection once
    ``hold_after`` bytes of it went through (a stalled network): the `dr` process on the
    other end is caught half-way through the snapshot transfer, for as long as the test wants.
    ``release()`` lets the rest through (and the end of the connection, if the server closed
    it meanwhile)."""

    def __init__(self, upstream_port: int, hold_after: int) -> None:
        self.hold_after = hold_after
        self.held = threading.Event()
        self._go = threading.Event()
        super().__init__(upstream_port, backlog=16)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
        self._pipe(upstream, client, self.hold_after)

    def _pipe(self, src: socket.socket, dst: socket.socket, hold_after: int) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if hold_after and sent >= hold_after:
                    self.held.set()
                    self._go.wait()
                dst.sendall(data)
                sent += len(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def release(self) -> None:
        self._go.set()

    def close(self) -> None:
        self.release()
        super().close()


def _half_way(proxy: HoldingProxy, backups: Path) -> list[Path]:
    """The partial artefacts, once half the snapshot is in and the rest held back."""
    return _partial_artefacts(backups) if proxy.held.is_set() else []


@pytest.fixture
def holding_proxy(redis_server: RedisProcess) -> Iterator[HoldingProxy]:
    proxy = HoldingProxy(redis_server.port, hold_after=SNAPSHOT_KEYS * MIB // 2)
    yield proxy
    proxy.close()


def _backup_held_half_way(
    server: RedisProcess,
    proxy: HoldingProxy,
    tmp_path: Path,
    dr: Callable[..., subprocess.Popen[str]],
) -> tuple[subprocess.Popen[str], Path, list[Path]]:
    """`dr redis backup` of a big dataset through ``proxy``, caught with half the snapshot
    written: (the process, its backup dir, the partial artefacts)."""
    _fill_big(server)
    backups = tmp_path / "backups"
    proc = dr("redis", "backup", "--redis-url", proxy.url(), "--backup-dir", str(backups))
    partial = wait_for("the artefact half-written", lambda: _half_way(proxy, backups))
    return proc, backups, partial


# ---- dr killed (SIGKILL) half-way through the snapshot ------------------------------------------


@pytest.mark.fault("dr process killed (SIGKILL)", "Redis backup, half-way through the snapshot")
def test_sigkill_half_way_through_the_snapshot(
    fault: Fault, redis_server: RedisProcess, holding_proxy: HoldingProxy, tmp_path: Path, dr
) -> None:
    proc, backups, leftovers = _backup_held_half_way(redis_server, holding_proxy, tmp_path, dr)
    proc.send_signal(signal.SIGKILL)
    fault.injected()
    proc.communicate()
    holding_proxy.release()
    listed = _listed(backups)
    # a later run (its clock past the sweep grace) sweeps the leftovers and takes a good backup
    catalog = Catalog([LocalStorage(backups)])
    later = datetime.now(UTC) + timedelta(hours=7)
    result = backup_redis(parse_redis_url(redis_server.url), catalog, now=lambda: later)
    after = catalog.list().backups
    verify = run_dr("redis", "verify", "--backup-dir", str(backups))
    fault.outcome(
        reported_ok=bool(listed),
        truly_ok=False,
        data_intact=result.complete and verify.returncode == 0,
    )
    assert proc.returncode == -signal.SIGKILL
    assert listed == []  # the killed backup does not exist ...
    assert leftovers[0].parent.name.startswith("redis-")  # ... though its partial artefact did
    assert f"{backups}/{leftovers[0].parent.name}" in result.swept
    assert result.complete
    assert [e.backup_id for e in after] == [result.manifest.backup_id]
    assert result.manifest.counts == {"db0": SNAPSHOT_KEYS + 1}
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert redis_server.client().get("marker") == b"original"  # the server carried on


# ---- the replication connection killed during the snapshot --------------------------------------


@pytest.mark.fault("Redis connection killed (CLIENT KILL)", "Redis backup, during the snapshot")
def test_connection_killed_during_the_snapshot(
    fault: Fault, redis_server: RedisProcess, holding_proxy: HoldingProxy, tmp_path: Path, dr
) -> None:
    proc, backups, _ = _backup_held_half_way(redis_server, holding_proxy, tmp_path, dr)
    killed = redis_server.client().execute_command("CLIENT", "KILL", "TYPE", "replica")
    fault.injected()
    holding_proxy.release()  # what was in flight arrives, then the end of the connection
    _, stderr = proc.communicate(timeout=60)
    listed = _listed(backups)
    fault.outcome(reported_ok=proc.returncode == 0, truly_ok=False, data_intact=True)
    assert killed == 1  # dr's SYNC connection, as a replica
    assert proc.returncode == 1
    line = _one_error_line(stderr)
    assert f"cannot snapshot {holding_proxy.url()}: Redis closed the connection during " in line
    assert listed == []  # no manifest: no backup
    assert _files(backups) == []  # and nothing left behind
    assert redis_server.client().get("marker") == b"original"


# ---- a damaged RDB artefact -----------------------------------------------------------------


def _config(tmp_path: Path, server: RedisProcess) -> Path:
    """dr.toml for a restore into ``server`` as a local process dr may stop and start."""
    cfg = tmp_path / "dr.toml"
    command = ", ".join(json.dumps(a) for a in server.command)
    cfg.write_text(f'[redis]\ncontrol = "local"\ncommand = [{command}]\nready_timeout_s = 60\n')
    return cfg


def _run_id(server: RedisProcess) -> str:
    return str(server.client().info("server")["run_id"])


@pytest.mark.fault("stored RDB artefact corrupted or truncated", "Redis verify, restore")
@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_damaged_rdb_artefact_is_reported_and_never_restored(
    fault: Fault, redis_server: RedisProcess, tmp_path: Path, damage: str
) -> None:
    c = redis_server.client()
    for i in range(2000):
        c.set(f"k:{i}", f"value {i}")
    backups = tmp_path / "backups"
    m = backup_redis(parse_redis_url(redis_server.url), Catalog([LocalStorage(backups)])).manifest
    stored = backups / m.backup_id / REDIS_ARTEFACT
    body = bytearray(stored.read_bytes())
    if damage == "corrupted":
        body[len(body) // 2] ^= 0x01  # one bit, same size
    else:
        del body[len(body) // 2 :]
    stored.write_bytes(bytes(body))
    fault.injected()
    c.set("marker", "after the backup")
    before = (_run_id(redis_server), c.dbsize())
    verify = run_dr("redis", "verify", "--backup-dir", str(backups))
    r = run_dr(
        "redis", "restore", "--redis-url", redis_server.url, "--backup-id", m.backup_id,
        "--confirm", "--config", str(_config(tmp_path, redis_server)),
        "--backup-dir", str(backups),
    )  # fmt: skip
    after = (_run_id(redis_server), c.dbsize())
    live = c.get("marker")
    fault.outcome(
        reported_ok=verify.returncode == 0 or r.returncode == 0,
        truly_ok=False,
        data_intact=live == b"after the backup" and after == before,
    )
    assert verify.returncode == 1
    assert "CHECKSUM_MISMATCH" in verify.stdout
    assert ("sha256 mismatch" if damage == "corrupted" else "manifest says") in verify.stdout
    assert "0 ok, 1 failed" in verify.stdout
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert f"no intact copy of backup {m.backup_id}" in line
    assert after == before  # the same server process, never stopped, its keys unchanged
    assert live == b"after the backup"
    assert not list(redis_server.dir.glob("*.pre_restore_*"))  # nothing moved aside


# ---- the target server killed during a restore ---------------------------------------------


LOAD_KEYS = 20  # of 2 KiB each
# Redis's own test knobs: 50 ms per key loaded (1 s in all, like a large dataset), and INFO
# answered while loading (every 1 KiB read, not every 2 MiB)
SLOW_LOAD = ("--key-load-delay", "50000", "--loading-process-events-interval-bytes", "1024")


def _loading_pid(server: RedisProcess) -> int | None:
    """The pid of the server on the port while it is loading a dataset, else None (a raw
    ``INFO``: redis-py's connection handshake is refused while a server loads)."""
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as sock:
            sock.sendall(b"INFO\r\n")
            reply = sock.makefile("rb")
            size = int(reply.readline()[1:])  # $<len>
            body = reply.read(size)
    except (OSError, ValueError):
        return None
    info = dict(ln.split(":", 1) for ln in body.decode().splitlines() if ":" in ln)
    return int(info["process_id"]) if info.get("loading") == "1" else None


@pytest.mark.fault("target Redis server killed (SIGKILL)", "Redis restore, while it loads")
def test_target_server_killed_during_the_restore(fault: Fault, tmp_path: Path, dr) -> None:
    server = RedisProcess(tmp_path / "redis", ["--appendonly", "yes", *SLOW_LOAD]).start()
    try:
        c = server.client()
        values = {f"k:{i}": os.urandom(2048) for i in range(LOAD_KEYS)}
        c.mset(values)
        backups = tmp_path / "backups"
        backup_redis(parse_redis_url(server.url), Catalog([LocalStorage(backups)]))
        c.set("marker", "after the backup")  # in the server's AOF only
        args = (
            "redis", "restore", "--redis-url", server.url, "--latest", "--confirm",
            "--config", str(_config(tmp_path, server)), "--backup-dir", str(backups),
        )  # fmt: skip
        proc = dr(*args)
        pid = wait_for("the restored server loading the snapshot", lambda: _loading_pid(server))
        os.kill(pid, signal.SIGKILL)
        fault.injected()
        _, stderr = proc.communicate(timeout=60)
        down = not server.listening()
        kept = sorted(p.name for p in server.dir.glob("*.pre_restore_*"))
        kept_aof = b"".join(
            p.read_bytes() for p in server.dir.glob("appendonlydir.pre_restore_*/*") if p.is_file()
        )
        fault.outcome(
            reported_ok=proc.returncode == 0,
            truly_ok=False,
            data_intact=b"after the backup" in kept_aof,
        )
        assert proc.returncode == 1
        line = _one_error_line(stderr)
        assert "Redis exited with status -9 while starting" in line
        # exactly what is where: the previous data aside, the snapshot in place
        assert f"previous data kept as {server.dir / kept[0]}" in line
        assert f"the snapshot is in place as {server.dir / 'dump.rdb'}" in line
        assert down  # as the line says: nothing runs on the port
        assert [n.split(".pre_restore_")[0] for n in kept] == ["appendonlydir"]
        assert b"after the backup" in kept_aof  # the previous data, complete, kept aside
        # the server comes back (its supervisor) and the same restore finishes the job
        server.restart()  # reaps the process the restore stopped, starts a new one
        again = run_dr(*args)
        assert again.returncode == 0, again.stderr
        assert c.dbsize() == LOAD_KEYS
        assert c.mget(list(values)) == list(values.values())  # the snapshot, byte for byte
        assert int(c.info("persistence")["aof_enabled"]) == 1
        # the first kept copy survives the second restore (which keeps its own, under _2)
        assert b"after the backup" in b"".join(
            p.read_bytes() for p in (server.dir / kept[0]).iterdir()
        )
    finally:
        server.stop()


# ---- disk full on the backup dir ----------------------------------------------------------------


@pytest.mark.fault("disk full on the backup dir (file-size limit)", "Redis backup")
def test_disk_full_during_the_redis_backup(
    fault: Fault, redis_server: RedisProcess, tmp_path: Path, dr
) -> None:
    c = redis_server.client()
    for i in range(4):
        c.set(f"big:{i}", os.urandom(MIB))
    backups = tmp_path / "backups"
    proc = dr(
        "redis", "backup", "--redis-url", redis_server.url, "--backup-dir", str(backups),
        preexec_fn=_fsize_limit(1 * MIB),  # writes past 1 MiB fail with EFBIG, as on a full disk
    )  # fmt: skip
    fault.injected()
    _, stderr = proc.communicate(timeout=60)
    listed = _listed(backups)
    fault.outcome(reported_ok=proc.returncode == 0, truly_ok=False, data_intact=True)
    assert proc.returncode == 1
    line = _one_error_line(stderr)
    assert f"backup not stored in {backups}: cannot write {backups}/" in line
    assert "File too large" in line
    assert listed == []  # no partial backup listed
    assert _files(backups) == []  # and no partial artefact left
    assert c.dbsize() == 4  # the server carried on
