"""PITR rows of the reliability matrix (docs/reliability.md): real `dr` processes, a real
PostgreSQL cluster archiving into a real pgBackRest repository, real signals. Each test
records what a user saw (``fault.outcome``) before asserting it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.core.pitr import backup_physical, open_pitr
from tests import pitr_fixtures
from tests.conftest import DR, run_dr
from tests.faults.conftest import Fault, wait_for
from tests.pitr_fixtures import PitrEnv

pytestmark = pytest.mark.timeout(180)

pitr_env = pitr_fixtures.pitr_env


def _dr(env: PitrEnv, *args: str) -> subprocess.CompletedProcess[str]:
    # no per-file retries by pgBackRest (job-retry): a damaged file fails at once, not in 15 s
    return run_dr(*args, "--config", str(env.config), env={"PGBACKREST_JOB_RETRY": "0"})


def _error_line(stderr: str) -> str:
    """A failed restore: its progress lines, then one error line; no traceback."""
    assert "Traceback" not in stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("dr: error: ")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().endswith(errors[0]), stderr
    return errors[0]


def _untouched(env: PitrEnv) -> tuple[list[str], list[tuple[object, ...]]]:
    """What "the live server untouched" means: the directories next to its data directory
    and every row of the app's table."""
    dirs = sorted(p.name for p in env.cluster.base.iterdir() if not p.name.startswith(".s.PGSQL"))
    return dirs, env.sql("SELECT id, note FROM items ORDER BY id")


def _repo_backups(env: PitrEnv) -> Path:
    return env.base / "repo" / "backup" / "main"


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (runuser, pgbackrest, its local workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


@pytest.fixture
def filler(pitr_env: PitrEnv) -> PitrEnv:
    """The PITR environment with ~25 MB more data: a backup copies for a second or so."""
    pitr_env.sql(
        "CREATE TABLE filler AS SELECT g, md5(g::text) || md5(random()::text) AS pad "
        "FROM generate_series(1, 100000) g"
    )
    return pitr_env


# ---- dr backup --physical killed (SIGKILL) mid-backup -------------------------------------------


def _copying(env: PitrEnv, done: set[str]) -> str | None:
    """The label of a backup pgBackRest is copying files into (not finished), else None."""
    for d in _repo_backups(env).iterdir():
        if d.name in done or not d.name[:8].isdigit() or (d / "backup.manifest").exists():
            continue
        if any(p.suffix == ".zst" for p in (d / "pg_data").rglob("*")):
            return d.name
    return None


@pytest.mark.fault("dr and pgBackRest killed (SIGKILL)", "physical backup, while it copies")
def test_sigkill_during_the_physical_backup(fault: Fault, filler: PitrEnv) -> None:
    env = filler
    [first] = backup_physical(env.cfg(), "full").backups
    proc = subprocess.Popen(
        [DR, "backup", "--physical", "--config", str(env.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        label = wait_for("pgBackRest copying files", lambda: _copying(env, {first.label}))
        # the whole tree at once, as an OOM kill of the container or `systemctl kill` does
        for pid in _descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)
        fault.injected()
    finally:
        proc.kill()
        out, _ = proc.communicate()
    info = _dr(env, "pitr", "info")
    verify = _dr(env, "pitr", "verify")
    with _backup_lock(env):  # as while the next nightly backup runs: its set is not a failure
        verify_running = _dr(env, "pitr", "verify")
    again = _dr(env, "backup", "--physical")
    info_after = _dr(env, "pitr", "info")
    verify_after = _dr(env, "pitr", "verify")
    fault.outcome(
        reported_ok=proc.returncode == 0 or label in info.stdout,
        truly_ok=False,
        data_intact=first.label in info.stdout and again.returncode == 0,
    )
    assert proc.returncode == -signal.SIGKILL
    assert out == ""  # dr said nothing: no "physical backup ..." line
    # the killed backup is not listed; the earlier one still is, and the window with it
    assert info.returncode == 0, info.stderr
    assert label not in info.stdout
    assert first.label in info.stdout
    assert "recoverable window: " in info.stdout
    # verify shows the interrupted backup for what it is (never "valid")
    assert verify.returncode == 1
    assert f"backup: {label}, status: in-progress" in verify.stdout
    assert f"backup: {first.label}, status: valid" in verify.stdout
    assert verify_running.returncode == 0, verify_running.stdout + verify_running.stderr
    assert "note: a backup is running" in verify_running.stdout
    # the next backup succeeds (pgBackRest resumes or discards the partial one)
    assert again.returncode == 0, again.stderr
    assert "physical backup " in again.stdout
    assert verify_after.returncode == 0, verify_after.stdout + verify_after.stderr
    assert "status: in-progress" not in verify_after.stdout
    assert info_after.stdout.count("  full  ") == 2


@contextlib.contextmanager
def _backup_lock(env: PitrEnv) -> Iterator[None]:
    """Hold pgBackRest's backup lock of the stanza (an flock on its lock file), as a running
    ``pgbackrest backup`` does; the file keeps the owner pgBackRest gives it."""
    lock_dir = env.cfg().pitr.config_dir / "lock"  # type: ignore[union-attr]
    lock = lock_dir / f"{env.cfg().pitr.stanza}-backup.lock"  # type: ignore[union-attr]
    created = not lock.exists()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        st = lock_dir.stat()
        os.fchown(fd, st.st_uid, st.st_gid)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)
        if created:
            lock.unlink()


def _verify_then_restore(
    fault: Fault, env: PitrEnv, target: datetime
) -> tuple[subprocess.CompletedProcess[str], str]:
    """After a fault in the repository: `dr pitr verify` must fail, and a restore to ``target``
    must fail in one line before the live server is touched (same directories, same rows).
    Returns the verify run and the restore's error line."""
    before = _untouched(env)
    verify = _dr(env, "pitr", "verify")
    r = _dr(env, "restore", "--target-time", target.isoformat(), "--confirm")
    after = _untouched(env)
    fault.outcome(reported_ok=verify.returncode == 0 or r.returncode == 0, truly_ok=False,
                  data_intact=after == before)  # fmt: skip
    assert verify.returncode == 1
    assert "verify: FAILED" in verify.stdout
    assert r.returncode == 1
    line = _error_line(r.stderr)
    assert "the restored copy was removed, the live server was not touched" in line
    assert after == before
    return verify, line


# ---- a WAL segment missing from the repository ----------------------------------------------


@pytest.mark.fault("WAL segment missing from the repository", "PITR verify, restore past the gap")
def test_missing_wal_segment(fault: Fault, pitr_env: PitrEnv) -> None:
    env = pitr_env
    cfg = env.cfg()
    backup_physical(cfg, "full")
    for i in range(3):  # three more segments, each with a write
        env.sql(f"INSERT INTO items (note) VALUES ('segment {i}')")
        env.sql("SELECT pg_switch_wal()")
    time.sleep(1.1)  # pgBackRest and recovery compare times: the target after every write
    target = datetime.now(UTC)
    time.sleep(0.1)
    env.sql("INSERT INTO items (note) VALUES ('after the target')")
    tool = open_pitr(cfg).tool
    tool.check()  # everything archived
    segments = tool.wal_files(1, tool.info().archives[0].archive_id)
    victim = segments[-3].segment  # one of the segments the target needs
    [wal] = (env.base / "repo").glob(f"archive/main/*/*/{victim}-*")
    wal.unlink()
    fault.injected()
    verify, line = _verify_then_restore(fault, env, target)
    assert f"dr: error: WAL gap: {victim}..{victim} (repo1) missing" in verify.stderr
    assert "recovery ended before configured recovery target was reached" in line
    env.sql("INSERT INTO items (note) VALUES ('still writable')")


# ---- a backup file corrupted in the repository ----------------------------------------------


@pytest.mark.fault("backup file corrupted in the repository", "PITR verify, restore")
def test_corrupted_backup_file(fault: Fault, pitr_env: PitrEnv) -> None:
    env = pitr_env
    cfg = env.cfg()
    [b] = backup_physical(cfg, "full").backups
    time.sleep(1.1)
    target = datetime.now(UTC)
    stored = [
        p for p in (_repo_backups(env) / b.label / "pg_data" / "base").rglob("*.zst")
        if p.stat().st_size > 1000
    ]  # fmt: skip
    victim = sorted(stored)[len(stored) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    victim.write_bytes(bytes(data))
    fault.injected()
    verify, line = _verify_then_restore(fault, env, target)
    assert f"backup: {b.label}, status: invalid" in verify.stdout
    assert "checksum invalid: 1" in verify.stdout
    assert "pgbackrest restore failed" in line
    assert "does not match expected checksum" in line
