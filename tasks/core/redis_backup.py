"""Redis backups in the shared catalog: take, verify, restore.

backup_redis()
  1. snapshot over the replication protocol -> zstd -> sha256 -> every location at once
  2. manifest.json (engine "redis", keys per db in ``counts``)        <- commit point
  3. sweep leftovers, then retention over the Redis backups only (7 days by default)

verify_rdb(): sha256 (as every artefact) + the RDB itself: magic/version, every opcode and value
  walked, CRC64 trailer, keys per db against the manifest when the keyspace was quiet.

restore_redis(), with consent only; the snapshot is fetched and verified completely first:
  mode "server" (a server the tool controls): stop writers -> stop Redis -> move its RDB and AOF
    aside (kept) -> put the snapshot in place -> start with ``appendonly no`` so that the RDB
    is loaded -> check keys per db -> ``CONFIG SET appendonly yes`` and wait for the rewrite
    when the server ran with AOF -> start writers
  mode "keys" (any reachable server): ``RESTORE … REPLACE ABSTTL`` per key; nothing is flushed
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tasks.core import rdb
from tasks.core.artefacts import ArtefactWriter, fetch_artefact
from tasks.core.backup import BackupResult, finish_backup
from tasks.core.catalog import DEFAULT_SWEEP_GRACE, BackupEntry, Catalog, utcnow
from tasks.core.config import Config
from tasks.core.crypto import EncryptionKey
from tasks.core.engines.redis import (
    RedisServer,
    RedisURL,
    check_counts,
    parse_redis_url,
    read_facts,
    replay_keys,
    require_counts,
    snapshot,
)
from tasks.core.errors import (
    ConfigError,
    ConsentRequired,
    DRError,
    IntegrityError,
    VerificationFailed,
)
from tasks.core.manifest import Manifest, RedisFacts, new_backup_id
from tasks.core.platform import Platform, ScaleState
from tasks.core.storage import CHUNK
from tasks.core.units import age, size, utc
from tasks.core.version import VERSION

if TYPE_CHECKING:
    from tasks.core.engines.redis_pod import RedisPod

__all__ = [
    "REDIS_ARTEFACT",
    "RedisRestorePlan",
    "RedisRestoreResult",
    "backup_redis",
    "parse_redis_url",
    "plan_redis_restore",
    "restore_redis",
    "server_control",
    "verify_rdb",
]

REDIS_ARTEFACT = "dump.rdb.zst"
DEFAULT_RETENTION_DAYS = 7  # runbook "Redis Backups"
Mode = Literal["server", "keys"]


def backup_redis(
    url: RedisURL,
    catalog: Catalog,
    *,
    name: str = "redis",
    progress: Callable[[int], None] | None = None,
    retention_days: int | None = DEFAULT_RETENTION_DAYS,
    labels: dict[str, str] | None = None,
    now: Callable[[], datetime] = utcnow,
    sweep_grace: timedelta = DEFAULT_SWEEP_GRACE,
) -> BackupResult:
    """Snapshot the Redis at ``url`` into every location of ``catalog`` as backup of ``name``.

    Succeeds if at least one location committed it (``failed`` says which did not); raises if
    none did. A crash at any point leaves no manifest, hence no backup."""
    t0 = time.monotonic()
    started = now()
    backup_id = new_backup_id(name, started)
    writer = ArtefactWriter(
        catalog.locations,
        f"{backup_id}/{REDIS_ARTEFACT}",
        fmt="redis-rdb",
        encryption=catalog.encryption,
    )
    try:
        snap = snapshot(url, writer.write, progress, now)
        art = writer.close()
    except BaseException:
        writer.abort()
        raise
    # a transfer flows/entry.py started began before this call: the backup began with it
    head_start = max(0.0, (started - snap.sent_at).total_seconds())
    manifest = Manifest(
        backup_id=backup_id,
        engine="redis",
        database=name,
        source=str(url),
        server_version=snap.facts.version,
        tool_version=VERSION,
        dump_tool=f"replication SYNC ({snap.mode})",
        started_at=started - timedelta(seconds=head_start),
        consistent_at=snap.consistent_at,
        finished_at=now(),
        artefacts=(art,),
        counts=snap.keys,
        redis=RedisFacts(
            role=snap.facts.role,
            appendonly=snap.facts.appendonly,
            rdb_version=snap.rdb_version,
            expiring=snap.expiring,
            used_memory=snap.facts.used_memory,
            counts_exact=snap.counts_exact,
        ),
        labels=labels or {},
    )
    return finish_backup(
        writer, manifest, catalog, retention_days=retention_days, now=now,
        sweep_grace=sweep_grace, t0=t0 - head_start,
    )  # fmt: skip


def verify_rdb(manifest: Manifest, chunks: Iterator[bytes]) -> tuple[bool, str]:
    """Walk the snapshot (raises IntegrityError for a bad header, structure or CRC64); then
    (ok, detail): keys per db must match the manifest when they were taken on a quiet keyspace."""
    summary = rdb.read_rdb(chunks)
    return _compare(manifest, summary)


def _compare(manifest: Manifest, summary: rdb.RdbSummary) -> tuple[bool, str]:
    found = summary.counts()
    expected = {db: n for db, n in manifest.counts.items() if n}
    crc = "CRC64 ok" if summary.checksum == "ok" else "no CRC64 (rdbchecksum no)"
    what = f"RDB v{summary.rdb_version}, {crc}, {sum(found.values())} keys in {len(found)} db(s)"
    facts = manifest.redis
    if facts is not None and not facts.counts_exact:
        return True, f"{what} (keyspace changed during the snapshot: counts not compared)"
    if found != expected:
        diff = sorted(set(found) | set(expected), key=lambda d: int(d[2:]))
        bad = [f"{d}: manifest {expected.get(d, 0)}, file {found.get(d, 0)}" for d in diff]
        bad = [b for b, d in zip(bad, diff, strict=True) if expected.get(d) != found.get(d)]
        return False, "keys per db differ: " + ", ".join(bad[:5])
    return True, f"{what}, sha256 ok"


# ---- restore --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisRestorePlan:
    entry: BackupEntry
    target: RedisURL
    mode: Mode
    control: str  # "local" / "kubernetes" for mode "server"
    writers: tuple[str, ...]
    age_s: float

    def describe(self) -> list[str]:
        m = self.entry.manifest
        keys = sum(m.counts.values())
        lines = [
            f"backup:   {m.backup_id} (redis {m.server_version}, {keys} keys in "
            f"{len(m.counts)} db(s), taken {utc(m.consistent_at)}, {age(self.age_s)} old, "
            f"{size(m.size)}, in {', '.join(self.entry.location_names())})",
            f"target:   {self.target}",
            "verify:   sha256, RDB structure and CRC64, keys per db (before anything changes)",
        ]
        if self.mode == "keys":
            lines.append(
                "restore:  RESTORE ... REPLACE ABSTTL for every key of the snapshot (TTLs kept); "
                "keys it does not hold are left alone; nothing is flushed"
            )
            return lines
        stop = ", ".join(self.writers) or "none configured"
        lines += [
            f"writers:  stop {stop}; started again at the end",
            f"restore:  stop Redis ({self.control}), move its RDB and AOF aside (kept), put the "
            "snapshot in place, start it with appendonly no, check keys per db, then turn AOF "
            "back on (rewrite) if it was on",
        ]
        return lines


@dataclass(frozen=True)
class RedisRestoreResult:
    plan: RedisRestorePlan
    source: str  # location url the bytes came from
    counts: list[tuple[str, str, int]]  # (db, expected n or lo..hi, actual)
    kept: list[str]  # where the replaced RDB/AOF went (mode server)
    aof_rewritten: bool
    duration_s: float
    skipped_locations: dict[str, str] = field(default_factory=dict)


def plan_redis_restore(
    target: RedisURL,
    entry: BackupEntry,
    *,
    mode: Mode,
    control: str = "none",
    writers: tuple[str, ...] = (),
    now: datetime | None = None,
) -> RedisRestorePlan:
    m = entry.manifest
    if m.engine != "redis":
        raise ConfigError(f"backup {m.backup_id} is a {m.engine} backup, not a Redis snapshot")
    if mode == "server" and control not in ("local", "kubernetes"):
        raise ConfigError(
            "restoring into the server needs [redis] control = 'local' (and its command) or "
            "'kubernetes' (and its workload) in the config; otherwise use --mode keys"
        )
    age_s = ((now or utcnow()) - m.consistent_at).total_seconds()
    return RedisRestorePlan(entry, target, mode, control, writers, age_s)


@contextlib.contextmanager
def server_control(cfg: Config, url: RedisURL) -> Iterator[RedisServer | RedisPod | None]:
    """The server a restore may stop and start, when ``[redis] control`` gives access to it
    (its Kubernetes client is closed at the end of the block)."""
    rc = cfg.redis
    if rc is None or rc.control == "none":
        yield None
    elif rc.control == "local":
        yield RedisServer(url, rc.command, rc.ready_timeout_s)
    else:
        from tasks.core.engines.redis_pod import RedisPod  # the kubernetes client only if used
        from tasks.core.platform.kubernetes import new_client

        assert rc.workload is not None
        p = cfg.platform
        client = new_client(p.kubeconfig, p.context)
        try:
            yield RedisPod(
                url,
                client,
                p.namespace,
                rc.workload,
                rc.workload_kind,
                rc.container,
                rc.ready_timeout_s,
            )
        finally:
            client.close()  # type: ignore[no-untyped-call]


def _fetch(
    entry: BackupEntry, dest: Path, key: EncryptionKey | None
) -> tuple[str, dict[str, str], rdb.RdbSummary]:
    """The snapshot from the first location whose copy checks out (sha256, RDB, counts)."""
    m = entry.manifest
    skipped: dict[str, str] = {}
    for loc in entry.locations:
        try:
            fetch_artefact(loc, m.artefacts[0], dest, key=key)
            summary = rdb.read_rdb(_chunks(dest))
        except (IntegrityError, FileNotFoundError) as exc:
            skipped[loc.url] = str(exc)
            continue
        ok, detail = _compare(m, summary)
        if not ok:
            raise VerificationFailed(f"backup {m.backup_id}: {detail}; nothing was changed")
        return loc.url, skipped, summary
    raise IntegrityError(f"no intact copy of backup {m.backup_id}: " + "; ".join(skipped.values()))


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def restore_redis(
    plan: RedisRestorePlan,
    *,
    confirm: bool,
    server: RedisServer | RedisPod | None = None,
    platform: Platform | None = None,
    ready_timeout_s: float = 300,
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    encryption: EncryptionKey | None = None,
) -> RedisRestoreResult:
    """Carry out ``plan``; without ``confirm`` raise ConsentRequired and change nothing.
    Mode "server" needs ``server`` (and ``platform`` when writers are named). A failure before
    Redis is stopped changes nothing (writers are started again); after it, the error says where
    the previous data was kept and that the writers are still stopped. ``encryption``: the key
    of an encrypted backup."""
    if not confirm:
        raise ConsentRequired("restore not confirmed: add --confirm to do it (nothing changed)")
    t0 = time.monotonic()
    m = plan.entry.manifest
    tmp = Path(tempfile.mkdtemp(prefix="dr-redis-", dir=work_dir))
    try:
        snap = tmp / "dump.rdb"
        source, skipped, summary = _fetch(plan.entry, snap, encryption)
        if plan.mode == "keys":
            assert m.redis is not None
            begin = _ms()
            replay_keys(plan.target, _chunks(snap), summary.rdb_version, progress)
            actual = read_facts(plan.target).keys
            rows = check_counts(summary, actual, begin, _ms())
            # keys the snapshot does not hold were left alone: a db may hold more, never fewer
            short = [(d, e, a) for d, e, a in rows if a < int(e.partition("..")[0])]
            if short:
                require_counts(short, str(plan.target))
            return RedisRestoreResult(plan, source, rows, [], False, time.monotonic() - t0, skipped)
        if server is None:
            raise ConfigError("mode server needs the server's control ([redis] control)")
        rows, kept, aof = _replace(plan, server, platform, snap, summary, ready_timeout_s)
        return RedisRestoreResult(plan, source, rows, kept, aof, time.monotonic() - t0, skipped)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(
    plan: RedisRestorePlan,
    server: RedisServer | RedisPod,
    platform: Platform | None,
    snap: Path,
    summary: rdb.RdbSummary,
    ready_timeout_s: float,
) -> tuple[list[tuple[str, str, int]], list[str], bool]:
    writers: ScaleState | None = None
    if plan.writers:
        if platform is None:
            raise ConfigError("writers are named but no platform was given to stop them")
        writers = platform.scale_down(list(plan.writers))
        platform.wait_ready(dict.fromkeys(plan.writers, 0), ready_timeout_s)
    stopped = False
    kept: list[str] | None = None  # known once the files were moved aside
    try:
        where = server.placement()
        server.stop()
        stopped = True
        short = plan.entry.backup_id.rsplit("-", 1)[-1]
        kept = server.put_in_place(snap, where, f"pre_restore_{short}")
        begin = _ms()
        server.start_without_aof(where)
        rows = check_counts(summary, server.facts().keys, begin, _ms())
        require_counts(rows, str(plan.target))
        if where.appendonly:
            server.enable_aof()
            rows = check_counts(summary, server.facts().keys, begin, _ms())
            require_counts(rows, f"{plan.target} after the AOF rewrite")
    except DRError as exc:
        if not stopped and writers is not None and platform is not None:
            with contextlib.suppress(DRError):
                platform.scale_up(writers)
            raise
        if kept is None:
            previous = "previous data kept in the data directory (*.pre_restore_*)"
        else:  # say exactly where, and what a start would load now
            placed = f"{where.dir.rstrip('/')}/{where.dbfilename}"
            previous = (
                f"previous data kept as {', '.join(kept)}" if kept else "no previous RDB or AOF"
            ) + f"; the snapshot is in place as {placed}"
        note = "; ".join(
            part
            for part in (
                previous if stopped else "",
                "writers still stopped: "
                + ", ".join(f"{k}={v}" for k, v in writers.replicas.items())
                if writers
                else "",
            )
            if part
        )
        raise type(exc)(f"{exc} ({note})" if note else str(exc)) from exc
    if writers is not None and platform is not None:
        platform.scale_up(writers)
        platform.wait_ready({k: v for k, v in writers.replicas.items() if v > 0}, ready_timeout_s)
    return rows, kept, where.appendonly


def _ms() -> int:
    return int(time.time() * 1000)
