"""Redis: snapshots over the replication protocol, restores into a server the tool controls, or
key by key into any server.

Snapshot (what ``redis-cli --rdb`` does): the replication protocol, in redis_sync.py (standard
library only, so that ``dr redis backup`` can start it before its heavy imports): ``INFO
keyspace``, ``SYNC`` with ``capa eof`` and ``rdb-only``, the RDB received on a thread while the
caller's thread takes the bytes (zstd + sha256 + every location); nothing is parsed on the way,
so a backup costs what the transfer costs. ``INFO`` after it gives the rest of the facts the
manifest records.

Restore (``RedisServer``): the server is stopped, its RDB and AOF are moved aside (kept), the
snapshot is put in place, the server is started with ``--appendonly no`` (else it would load
the AOF, not the RDB), keys per db are checked, and when it ran with AOF, ``CONFIG SET
appendonly yes`` rewrites the AOF from the loaded data. ``replay_keys`` instead sends every key
of the snapshot with ``RESTORE key ttl payload REPLACE ABSTTL`` (payload = the value's bytes from
the RDB as a DUMP payload): for servers without filesystem access.

Every redis-py and socket error goes through ``redis_errors``, the one place that translates
them: unreachable/timeouts -> TransientError, everything else -> PermanentError.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from tasks.core import rdb
from tasks.core.dburl import redact
from tasks.core.engines.redis_sync import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    Endpoint,
    Started,
    Transfer,
    take_early,
)
from tasks.core.errors import (
    ConfigError,
    DRError,
    PermanentError,
    TransientError,
    VerificationFailed,
)

__all__ = [
    "RedisServer",
    "RedisURL",
    "ServerFacts",
    "Snapshot",
    "parse_redis_url",
    "read_facts",
    "read_placement",
    "redis_errors",
    "replay_keys",
    "snapshot",
]

_BATCH_BYTES = 8 << 20  # RESTORE pipelines flush at this many payload bytes...
_BATCH_KEYS = 1000  # ... or keys


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py, socket and TLS errors into the project's tree (the only place that
    does). ``what`` names the action and the (redacted) server."""
    try:
        yield
    except DRError:
        raise
    except redis.exceptions.AuthenticationError as exc:  # a ConnectionError subclass
        raise PermanentError(f"cannot {what}: {_msg(exc)} (check the user and password)") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise TransientError(f"cannot {what}: Redis unreachable: {_msg(exc)}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise PermanentError(f"cannot {what}: TLS certificate rejected: {_msg(exc)}") from exc
    except OSError as exc:  # sockets: refused, reset, timed out; TLS handshake cut
        raise TransientError(f"cannot {what}: Redis unreachable: {_msg(exc)}") from exc
    except redis.exceptions.RedisError as exc:
        raise PermanentError(f"cannot {what}: {_msg(exc)}") from exc


def _msg(exc: BaseException) -> str:
    return redact(str(exc) or type(exc).__name__).splitlines()[0]


# ---- URLs -----------------------------------------------------------------------------------


class RedisURL(Endpoint):
    """A parsed ``redis://`` / ``rediss://`` URL (redis_sync.Endpoint) and redis-py clients of
    it; ``str()`` is the redacted form."""

    def _kwargs(self) -> dict[str, Any]:
        return _parse(self.raw)

    def client(self, db: int | None = None, timeout_s: float | None = None) -> redis.Redis:
        """A redis-py client (``db`` overrides the URL's database, ``timeout_s`` every
        timeout)."""
        kw = self._kwargs()
        if db is not None:
            kw["db"] = db
        if timeout_s is not None:
            kw["socket_timeout"] = kw["socket_connect_timeout"] = timeout_s
        kw.setdefault("socket_timeout", READ_TIMEOUT_S)
        kw.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
        # no silent reconnect loops: a step fails at once and its task decides about retries
        kw["retry"] = Retry(NoBackoff(), 0)
        return redis.Redis.from_pool(redis.ConnectionPool(**kw))  # close() closes the pool too


def _parse(url: str) -> dict[str, Any]:
    return dict(parse_url(url))  # type: ignore[no-untyped-call]


def parse_redis_url(url: str) -> RedisURL:
    """Parse ``url``; raises ConfigError naming what is wrong (the message is redacted)."""
    url = url.strip()
    if not url.lower().startswith(("redis://", "rediss://")):
        raise ConfigError(f"not a Redis URL: {redact(url)!r} (expected redis:// or rediss://)")
    try:
        _parse(url)  # redis-py's objections first: its clients are built from the same URL
        return RedisURL.parse(url)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redact(url)!r}: {_msg(exc)}") from exc


# ---- snapshots -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerFacts:
    """INFO as the manifest and the restore need it."""

    version: str
    role: str
    appendonly: bool
    used_memory: int
    keys: dict[str, int]  # "db0" -> keys
    expiring: dict[str, int]  # "db0" -> keys with a TTL
    loading: bool

    @classmethod
    def read(cls, client: redis.Redis) -> ServerFacts:
        info: dict[str, Any] = client.info()
        keys, expiring = {}, {}
        for name, value in info.items():
            if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict):
                keys[name] = int(value.get("keys", 0))
                expiring[name] = int(value.get("expires", 0))
        return cls(
            str(info.get("redis_version", "unknown")),
            str(info.get("role", "unknown")),
            bool(int(info.get("aof_enabled", 0))),
            int(info.get("used_memory", 0)),
            keys,
            expiring,
            bool(int(info.get("loading", 0))),
        )


def read_facts(url: RedisURL) -> ServerFacts:
    """INFO of the server at ``url``."""
    with redis_errors(f"read INFO of {url}"):
        client = url.client()
        try:
            return ServerFacts.read(client)
        finally:
            client.close()


@dataclass(frozen=True)
class Snapshot:
    """What ``snapshot`` streamed and what the server said around it."""

    facts: ServerFacts  # INFO after the transfer
    keys: dict[str, int]  # INFO keyspace after the transfer
    expiring: dict[str, int]
    counts_exact: bool  # the keyspace did not change between INFO before and after
    rdb_version: int
    consistent_at: datetime
    size: int  # RDB bytes
    mode: str  # "disk" or "diskless"
    sent_at: datetime  # SYNC: before the call when flows/entry.py started the transfer


def snapshot(
    url: RedisURL,
    write: Callable[[bytes], None],
    progress: Callable[[int], None] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Snapshot:
    """Stream an RDB snapshot of the server at ``url`` to ``write``; raises TransientError
    when the server is unreachable or the transfer breaks, PermanentError when it refuses
    (an ACL user without ``+sync +replconf``, a replica that is not ready, ...). The transfer
    that flows/entry.py started for the same URL is used when there is one."""
    what = f"snapshot {url}"
    with redis_errors(what):
        client = url.client()
        try:
            size = 0
            transfer: Transfer | None = None
            try:
                transfer, start = _begin(url, client, now)
                head = bytearray()
                for chunk in transfer.chunks():
                    if len(head) < 4096:
                        head += chunk[: 4096 - len(head)]
                    write(chunk)
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
            except TransientError as exc:  # the connection closed: say which, and how far it got
                raise TransientError(f"cannot {what}: {exc} (after {size} bytes)") from exc
            finally:
                if transfer is not None:
                    transfer.close()
            after = ServerFacts.read(client)
        finally:
            client.close()
    version, aux = rdb.read_header(bytes(head))
    return Snapshot(
        after,
        after.keys,
        after.expiring,
        (start.keys, start.expiring) == (after.keys, after.expiring),
        version,
        _snapshot_time(aux, start.sent_at),
        size,
        start.mode,
        start.sent_at,
    )


def _begin(
    url: RedisURL, client: redis.Redis, now: Callable[[], datetime]
) -> tuple[Transfer, Started]:
    """The transfer started early for ``url`` (flows/entry.py), else a new one, once the server
    answered SYNC. When it cannot start, redis-py reads INFO, as the step before SYNC used to:
    when that fails too, its error is the one raised (the words users know for an unreachable
    server, a wrong password, an ACL); else the transfer's. After a failed early start, a new
    transfer is started when redis-py could read INFO."""
    transfer = take_early(url.raw)
    early = transfer is not None
    while True:
        if transfer is None:
            transfer = Transfer(url, now)
        try:
            return transfer, transfer.started()
        except BaseException as exc:
            transfer.close()
            if not isinstance(exc, DRError | OSError):
                raise
            # after a timeout the server was given its time already: a second is enough
            probe = url.client(timeout_s=1.0) if isinstance(exc, TimeoutError) else client
            try:
                ServerFacts.read(probe)
            finally:
                if probe is not client:
                    probe.close()
            if not early:
                raise
            transfer, early = None, False  # the server answers now: start again


def _snapshot_time(aux: Mapping[str, str], sent_at: datetime) -> datetime:
    """When the data was forked: just after SYNC, unless the master reused a save it had begun
    earlier (its ``ctime`` aux field, whole seconds, is then older than SYNC)."""
    try:
        ctime = int(aux["ctime"])
    except (KeyError, ValueError):
        return sent_at
    return sent_at if ctime >= int(sent_at.timestamp()) else datetime.fromtimestamp(ctime, UTC)


# ---- restore into a server the tool controls -------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a server keeps its files (CONFIG GET), and whether it runs with AOF."""

    dir: str
    dbfilename: str
    appenddirname: str  # Redis 7 multi-part AOF folder (older: the single file's name)
    appendonly: bool

    @classmethod
    def read(cls, client: redis.Redis) -> Placement:
        cfg: dict[str, str] = {}
        for name in ("dir", "dbfilename", "appendonly", "appenddirname", "appendfilename"):
            cfg.update({str(k): str(v) for k, v in client.config_get(name).items()})
        return cls(
            cfg["dir"],
            cfg["dbfilename"],
            cfg.get("appenddirname") or cfg.get("appendfilename", "appendonly.aof"),
            cfg.get("appendonly") == "yes",
        )


def read_placement(url: RedisURL) -> Placement:
    """Where the server at ``url`` keeps its data (``CONFIG GET``)."""
    with redis_errors(f"read the configuration of {url}"):
        client = url.client()
        try:
            return Placement.read(client)
        finally:
            client.close()


class RedisServer:
    """A local ``redis-server`` the tool may stop and start with ``command`` (as configured
    in production; ``--appendonly no`` is appended for the loading start)."""

    def __init__(self, url: RedisURL, command: Sequence[str], timeout_s: float = 300) -> None:
        self.url, self.command, self.timeout_s = url, list(command), timeout_s

    def placement(self) -> Placement:
        return read_placement(self.url)

    def stop(self) -> None:
        """SHUTDOWN NOSAVE (nothing of the current data is written over what is kept aside)
        and wait until the port is closed."""
        with redis_errors(f"stop {self.url}"):
            client = self.url.client()
            try:
                client.shutdown(nosave=True)
            finally:
                client.close()
        deadline = time.monotonic() + self.timeout_s
        while _reachable(self.url):
            if time.monotonic() > deadline:
                raise TransientError(f"{self.url} still answers {self.timeout_s:g}s after SHUTDOWN")
            time.sleep(0.05)

    def put_in_place(self, snapshot_file: Path, where: Placement, suffix: str) -> list[str]:
        """Move the current RDB and AOF aside (``<name>.<suffix>``) and put ``snapshot_file``
        in as the RDB, owned like the data directory; returns the kept paths."""
        data = Path(where.dir)
        kept = []
        for name in (where.dbfilename, where.appenddirname):
            current = data / name
            if current.exists():
                aside = _free_name(data, f"{name}.{suffix}")
                current.rename(aside)
                kept.append(str(aside))
        tmp = data / f".{where.dbfilename}.dr-restore"
        shutil.copyfile(snapshot_file, tmp)
        st = data.stat()
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, 0o640)
        os.replace(tmp, data / where.dbfilename)
        return kept

    def start_without_aof(self, where: Placement) -> None:
        """Start the server so that it loads the RDB (``--appendonly no``), wait until loaded."""
        log = Path(tempfile.gettempdir()) / f"dr-redis-{self.url.port}.log"
        with log.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    [*self.command, "--appendonly", "no"],
                    cwd=where.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # it outlives dr
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot start Redis: {exc.strerror}: {exc.filename or self.command[0]}"
                ) from exc
        _STARTED[proc.pid] = proc
        self.wait_loaded(proc)

    def wait_loaded(self, proc: subprocess.Popen[bytes] | None = None) -> ServerFacts:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if proc is not None and proc.poll() is not None:
                raise PermanentError(
                    f"Redis exited with status {proc.returncode} while starting (see "
                    f"{tempfile.gettempdir()}/dr-redis-{self.url.port}.log and its own log)"
                )
            with contextlib.suppress(TransientError, PermanentError):
                facts = self.facts()
                if not facts.loading:
                    return facts
            if time.monotonic() > deadline:
                raise TransientError(f"{self.url} not loaded after {self.timeout_s:g}s")
            time.sleep(0.05)

    def facts(self) -> ServerFacts:
        return read_facts(self.url)

    def enable_aof(self) -> None:
        """``CONFIG SET appendonly yes`` and wait until the rewrite it starts has finished:
        from then on the AOF holds the restored data."""
        with redis_errors(f"turn AOF back on in {self.url}"):
            client = self.url.client()
            try:
                client.config_set("appendonly", "yes")
                deadline = time.monotonic() + self.timeout_s
                while True:
                    p: dict[str, Any] = client.info("persistence")
                    busy = int(p.get("aof_rewrite_in_progress", 0)) or int(
                        p.get("aof_rewrite_scheduled", 0)
                    )
                    if int(p.get("aof_enabled", 0)) and not busy:
                        if p.get("aof_last_bgrewrite_status") != "ok":
                            raise PermanentError(
                                f"AOF rewrite in {self.url} failed: see the server's log"
                            )
                        return
                    if time.monotonic() > deadline:
                        raise TransientError(f"AOF rewrite in {self.url} still running")
                    time.sleep(0.05)
            finally:
                client.close()


_STARTED: dict[int, subprocess.Popen[bytes]] = {}  # servers we started: no zombie warnings


def _reachable(url: RedisURL) -> bool:
    try:
        with socket.create_connection((url.host, url.port), timeout=1):
            return True
    except OSError:
        return False


def _free_name(folder: Path, name: str) -> Path:
    candidate = folder / name
    n = 2
    while candidate.exists():
        candidate = folder / f"{name}_{n}"
        n += 1
    return candidate


def check_counts(
    summary: rdb.RdbSummary, actual: Mapping[str, int], loaded_from_ms: int, loaded_until_ms: int
) -> list[tuple[str, str, int]]:
    """Keys per db of a server that loaded the snapshot against the file: a db passes when
    its count lies between the keys still alive at the end and those alive at the start of
    the load (keys whose TTL ran out in between may be gone). Returns (db, expected, actual)
    for every db, with expected as ``n`` or ``lo..hi``."""
    rows = []
    dbs = sorted({*(f"db{d}" for d in summary.keys), *actual}, key=lambda d: int(d[2:]))
    for name in dbs:
        d = int(name[2:])
        lo, hi = summary.alive(d, loaded_until_ms), summary.alive(d, loaded_from_ms)
        got = actual.get(name, 0)
        rows.append((name, str(lo) if lo == hi else f"{lo}..{hi}", got))
    return rows


def counts_ok(rows: Sequence[tuple[str, str, int]]) -> bool:
    for _, expected, got in rows:
        lo, _, hi = expected.partition("..")
        if not int(lo) <= got <= int(hi or lo):
            return False
    return True


def require_counts(rows: Sequence[tuple[str, str, int]], where: str) -> None:
    if not counts_ok(rows):
        bad = ", ".join(
            f"{d}: expected {e}, got {g}" for d, e, g in rows if not counts_ok([(d, e, g)])
        )
        raise VerificationFailed(f"{where} does not hold the snapshot's keys ({bad})")


# ---- restore key by key -----------------------------------------------------------------------


def replay_keys(
    url: RedisURL,
    chunks: Iterable[bytes],
    rdb_version: int,
    progress: Callable[[int], None] | None = None,
) -> rdb.RdbSummary:
    """``RESTORE key <abs ms or 0> payload REPLACE ABSTTL`` for every key of the RDB given as
    ``chunks``, into the same db numbers. Keys already expired are skipped by the server; keys
    the snapshot does not hold are left alone. Raises PermanentError when the server refuses a
    payload (a Redis older than the snapshot's RDB version) and IntegrityError for a bad file
    (verify it completely before calling this: keys are sent while it is read)."""
    clients: dict[int, redis.Redis] = {}
    pipes: dict[int, Any] = {}
    pending = [0, 0]  # keys, bytes

    def flush() -> None:
        for pipe in pipes.values():
            pipe.execute()
        pending[:] = [0, 0]

    def on_key(db: int, key: bytes, expire: int | None, value: bytes) -> None:
        if db not in pipes:
            clients[db] = url.client(db)
            pipes[db] = clients[db].pipeline(transaction=False)
        payload = rdb.dump_payload(value, rdb_version)
        pipes[db].execute_command("RESTORE", key, expire or 0, payload, "REPLACE", "ABSTTL")
        pending[0] += 1
        pending[1] += len(payload)
        if progress:
            progress(len(payload))
        if pending[0] >= _BATCH_KEYS or pending[1] >= _BATCH_BYTES:
            flush()

    with redis_errors(f"restore keys into {url}"):
        try:
            summary = rdb.read_rdb(chunks, on_key)
            flush()
        finally:
            for c in clients.values():
                c.close()
    return summary
