"""Point-in-time recovery and physical backups of the PostgreSQL server named by ``[pitr]``.

setup()               pgbackrest.conf, stanza-create, archive_command (ALTER SYSTEM + reload), check
backup_physical()     a full/diff/incr backup into every repository
recoverable_window()  earliest and latest point a restore can reach; age of the newest WAL
plan_pitr()           the target checked against the window: a bad one fails here, nothing changed
pitr_restore()        with consent only:
  1. pgBackRest restores into a NEW data directory next to the live one
  2. that copy starts on a spare port, recovers to the target and pauses there (read-only: no
     WAL of an unverified copy ever reaches the repository)
  3. verify: connect, count the rows of every table, run the check queries
  4. switch over: stop the live server, move its data directory aside, move the copy into
     place, start it, promote it; the database accepts writes
A failure before step 4 leaves the live server running and its data directory untouched (the
copy is removed). A failure during step 4 puts the previous data directory back and starts it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import psycopg

from tasks.core.config import Config, CriticalQuery, PitrConfig
from tasks.core.dbcheck import run_critical_queries
from tasks.core.dburl import DatabaseURL, redact
from tasks.core.engines.pgbackrest import (
    SEGMENT_SIZE,
    BackupType,
    PgBackRest,
    PhysicalBackup,
    StanzaInfo,
    VerifyOutcome,
    int_to_lsn,
    lsn_to_int,
    segment_start,
)
from tasks.core.engines.postgres import count_rows
from tasks.core.errors import (
    CommandFailed,
    ConfigError,
    ConsentRequired,
    DRError,
    PermanentError,
    VerificationFailed,
)
from tasks.core.pgcluster import find_pg_bin, free_port
from tasks.core.report import Check
from tasks.core.units import age, utc

__all__ = [
    "PhysicalBackupResult",
    "PitrPlan",
    "PitrResult",
    "SetupResult",
    "Target",
    "Window",
    "backup_physical",
    "open_pitr",
    "pitr_restore",
    "plan_pitr",
    "recoverable_window",
    "setup",
    "verify_repository",
]

TargetKind = Literal["latest", "time", "lsn", "xid"]


@dataclass(frozen=True)
class Target:
    """Where recovery stops. ``exclusive``: just before the target (a deletion's time), not
    after it."""

    kind: TargetKind
    time: datetime | None = None
    lsn: str | None = None
    xid: str | None = None
    exclusive: bool = False

    def describe(self) -> str:
        before = "just before " if self.exclusive else ""
        if self.kind == "time" and self.time is not None:
            return f"{before}{self.time.astimezone(UTC):%Y-%m-%d %H:%M:%S.%fZ}"
        if self.kind == "lsn":
            return f"{before}LSN {self.lsn}"
        if self.kind == "xid":
            return f"{before}transaction {self.xid}"
        return "the end of the archived WAL (latest)"


@dataclass(frozen=True)
class Window:
    """What a restore can reach now (from ``pgbackrest info`` and the archived WAL)."""

    backups: tuple[PhysicalBackup, ...]
    earliest: datetime | None  # the end of the oldest backup: no restore stops before it
    latest: datetime | None  # when the newest archived WAL segment reached the repository
    earliest_lsn: str | None
    latest_lsn: str | None  # the end of the newest archived segment (an upper bound)
    newest_wal: str | None
    newest_wal_age_s: float | None  # the live RPO: changes since then exist only on the server
    flushed: str = ""  # "" when the live server's current WAL was archived first, else why not

    def describe(self) -> str:
        if self.earliest is None or self.latest is None:
            return "recoverable window: none (no backup, or no archived WAL yet)"
        rpo = age(self.newest_wal_age_s) if self.newest_wal_age_s is not None else "?"
        return (
            f"recoverable window: {utc(self.earliest)} .. {utc(self.latest)} "
            f"(LSN {self.earliest_lsn} .. {self.latest_lsn}); newest archived WAL "
            f"{self.newest_wal}, {rpo} old"
        )


@dataclass(frozen=True)
class SetupResult:
    config_file: Path
    repos: list[str]
    archive_command: str
    applied: bool  # archive settings in place or set with ALTER SYSTEM (else: manual_lines)
    manual_lines: list[str]
    restart_needed: bool
    checked: bool  # pgbackrest check passed


@dataclass(frozen=True)
class PhysicalBackupResult:
    backups: list[PhysicalBackup]  # the new backup in each repository
    duration_s: float


@dataclass(frozen=True)
class PitrPlan:
    target: Target
    window: Window
    data_dir: Path
    new_dir: Path  # the restore goes here; it becomes data_dir at the switch
    aside_dir: Path  # the live data directory is kept here after the switch
    server_running: bool

    def describe(self) -> list[str]:
        return [
            f"target:   {self.target.describe()}",
            self.window.describe(),
            f"restore:  pgBackRest into the new directory {self.new_dir} (the live one is not "
            "touched), recover to the target on a spare port, verify (connect, row counts, "
            "check queries)",
            f"switch:   stop the server, keep {self.data_dir} as {self.aside_dir}, move the "
            "restored directory into its place, start, promote",
            "the server is " + ("running now" if self.server_running else "NOT running now"),
        ]


@dataclass(frozen=True)
class PitrResult:
    plan: PitrPlan
    checks: list[Check]
    counts: dict[str, dict[str, int]]  # database -> table -> rows, in the restored copy
    reached: datetime | None  # the time of the last transaction recovery replayed
    restore_s: float  # pgBackRest restore into the new directory
    recover_s: float  # start, replay to the target
    writable_s: float  # restore start -> database accepts writes (the RTO component)
    kept_as: Path


class LocalServer:
    """pg_ctl for the server's data directory, as the server's OS user."""

    def __init__(self, tool: PgBackRest, bin_dir: Path | None) -> None:
        self.tool = tool
        self.pg_ctl = str((bin_dir or find_pg_bin()) / "pg_ctl")

    def _pg_ctl(self, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        argv = self.tool.as_server_user([self.pg_ctl, *args])
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"pg_ctl {args[-1]} did not finish in {timeout_s:g}s") from None

    def running(self, data: Path) -> bool:
        return self._pg_ctl("-D", str(data), "status", timeout_s=30).returncode == 0

    def start(self, data: Path, log: Path, *, port: int | None, timeout_s: float) -> None:
        args = ["-D", str(data), "-l", str(log), "-w", "-t", str(int(timeout_s))]
        if port is not None:
            args += ["-o", f"-p {port} -c hot_standby=on"]
        proc = self._pg_ctl(*args, "start", timeout_s=timeout_s + 30)
        if proc.returncode != 0:
            raise CommandFailed(f"the server in {data} did not start: {_server_error(log)}")

    def stop(self, data: Path, *, timeout_s: float = 300) -> None:
        if not self.running(data):
            return
        proc = self._pg_ctl(
            "-D", str(data), "-m", "fast", "-w", "-t", str(int(timeout_s)), "stop",
            timeout_s=timeout_s + 30,
        )  # fmt: skip
        if proc.returncode != 0:
            raise CommandFailed(f"the server in {data} did not stop: {proc.stderr.strip()}")


def _server_error(log: Path) -> str:
    """The server's own reason, from its log (FATAL/PANIC lines first)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"see {log}"
    bad = [ln for ln in lines if "FATAL:" in ln or "PANIC:" in ln]
    pick = (bad or lines or [f"see {log}"])[-1]
    return pick.split("FATAL:", 1)[-1].strip() if "FATAL:" in pick else pick.strip()


@dataclass(frozen=True)
class Pitr:
    """The live objects of ``[pitr]``: pgBackRest, the server, how to reach it."""

    cfg: PitrConfig
    tool: PgBackRest
    server: LocalServer
    url: DatabaseURL  # the [pitr] database on the live server
    databases: tuple[tuple[str, DatabaseURL], ...]  # every configured database on that server
    queries: tuple[CriticalQuery, ...] = field(default=())


def open_pitr(cfg: Config) -> Pitr:
    """ConfigError when ``[pitr]`` is missing: physical backups are not configured."""
    p = cfg.pitr
    if p is None:
        raise ConfigError(
            "pgBackRest is not configured: add a [pitr] section to dr.toml "
            "(docs/pitr.md) and run `dr pitr setup`"
        )
    db = cfg.database(p.database)
    url = db.resolve_url()
    if url.engine != "postgresql":
        raise ConfigError(f"[pitr] database {db.name!r} is not PostgreSQL")
    params = dict(url.params)
    port = p.port or int(params.get("port", 5432))
    kube = None
    if p.kubernetes_pod:
        kube = (cfg.platform.namespace, p.kubernetes_pod, p.kubernetes_container)
    tool = PgBackRest(p, port=port, s3_bucket=cfg.storage.s3_bucket, kube=kube)
    same: list[tuple[str, DatabaseURL]] = []
    queries: list[CriticalQuery] = []
    for d in cfg.databases:
        try:
            u = d.resolve_url()
        except ConfigError:
            continue
        if (
            u.engine == "postgresql"
            and dict(u.params).get("host") == params.get("host")
            and (int(dict(u.params).get("port", 5432)) == port)
        ):
            same.append((d.name, u))
            queries += d.critical_queries
    return Pitr(p, tool, LocalServer(tool, p.bin_dir), url, tuple(same), tuple(queries))


# ---- setup and backup -----------------------------------------------------------------------


def setup(cfg: Config, *, restart: bool = False) -> SetupResult:
    """Idempotent: write the configuration, create the stanza, make the server archive into it
    (ALTER SYSTEM + reload when allowed; ``restart`` when archive_mode/wal_level need one),
    then ``pgbackrest check``."""
    pitr = open_pitr(cfg)
    p, tool = pitr.cfg, pitr.tool
    conf = tool.conf if tool.kube is not None else tool.write_config()  # a pod mounts its own
    wanted = {
        "archive_mode": "on",
        "archive_command": tool.archive_command(),
        "archive_timeout": str(p.archive_timeout_s),
    }
    with _connect(pitr.url, "set up archiving") as conn:
        current = {
            k: str(conn.execute("SELECT current_setting(%s)", (k,)).fetchone()[0])  # type: ignore[index]
            for k in (*wanted, "wal_level")
        }
        needs_restart = current["archive_mode"] == "off" or current["wal_level"] == "minimal"
        manual = [f"{k} = '{v}'" for k, v in wanted.items()]
        if current["wal_level"] == "minimal":
            manual.append("wal_level = 'replica'")
        # already archiving into this stanza (set by hand, or by an earlier setup)
        applied = not needs_restart and all(
            _normal(k, current[k]) == _normal(k, v) for k, v in wanted.items()
        )
        if p.alter_system and not applied:
            for k, v in wanted.items():
                if _normal(k, current[k]) != _normal(k, v):
                    conn.execute(f"ALTER SYSTEM SET {k} = {_quote(v)}")
            if current["wal_level"] == "minimal":
                conn.execute("ALTER SYSTEM SET wal_level = 'replica'")
            conn.execute("SELECT pg_reload_conf()")
            applied = True
    if needs_restart and applied and restart and tool.kube is not None:
        raise ConfigError("archive_mode needs a restart: restart the database pod (not dr's job)")
    if needs_restart and applied and restart:
        pitr.server.stop(p.data_dir)
        pitr.server.start(
            p.data_dir, p.config_dir / "log" / "server.log", port=None,
            timeout_s=p.ready_timeout_s,
        )  # fmt: skip
        needs_restart = False
    checked = False
    tool.stanza_create()
    if applied and not needs_restart:
        _wait_reloaded(pitr.url, wanted["archive_command"])
        tool.check()
        checked = True
    return SetupResult(
        conf,
        [d for _, d in tool.repos()],
        wanted["archive_command"],
        applied,
        [] if applied else manual,
        needs_restart,
        checked,
    )


def _normal(key: str, value: str) -> str:
    if key == "archive_timeout":  # "1min" and "60" are the same setting
        units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}
        for u, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
            if value.endswith(u) and value[: -len(u)].isdigit():
                return str(int(int(value[: -len(u)]) * mult))
    return value


def _quote(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _wait_reloaded(url: DatabaseURL, command: str, timeout_s: float = 10) -> None:
    """pg_reload_conf() signals; the archiver picks the new command up a moment later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with _connect(url, "read archive_command") as conn:
            row = conn.execute("SELECT current_setting('archive_command')").fetchone()
        if row and row[0] == command:
            return
        time.sleep(0.2)


def backup_physical(cfg: Config, kind: BackupType = "full") -> PhysicalBackupResult:
    """A ``kind`` backup into every repository (pgBackRest turns a diff/incr without a prior
    full into a full); expiry per the retention written at setup runs after each."""
    pitr = open_pitr(cfg)
    t0 = time.monotonic()
    repos = [n for n, _ in pitr.tool.repos()]
    for n in repos:
        pitr.tool.backup(kind, n)
    backups = pitr.tool.info().backups  # oldest first: the last of each repo is the new one
    new = [[b for b in backups if b.repo == n][-1] for n in repos]
    return PhysicalBackupResult(new, time.monotonic() - t0)


def verify_repository(cfg: Config) -> VerifyOutcome:
    return open_pitr(cfg).tool.verify()


# ---- the recoverable window -----------------------------------------------------------------


def recoverable_window(cfg: Config, now: datetime, *, flush: bool = False) -> Window:
    """From the repository. ``flush``: first have the live server commit an empty transaction
    and archive its current WAL (``pgbackrest check``), so that "a minute ago" is reachable;
    best effort (the server may be down)."""
    pitr = open_pitr(cfg)
    flushed = ""
    if flush:
        try:
            # an empty transaction: recovery to a time stops at the first commit after it, so
            # one must exist for a target in the last idle seconds to be reachable
            with _connect(pitr.url, "mark the current time in the WAL") as conn:
                conn.execute("SELECT txid_current()")
            pitr.tool.check()
        except DRError as exc:
            flushed = f"could not archive the current WAL first: {exc}"
    return _window(pitr.tool, pitr.tool.info(), now, flushed)


def _window(tool: PgBackRest, info: StanzaInfo, now: datetime, flushed: str) -> Window:
    good = [b for b in info.backups if not b.error]
    newest: tuple[str, datetime, int] | None = None  # segment, archived at, repo
    for a in info.archives:
        if a.max is None:
            continue
        files = [w for w in tool.wal_files(a.repo, a.archive_id) if w.segment == a.max]
        # repo-ls times are whole seconds: the segment's content is older than this + 1 s
        at = files[-1].archived_at + timedelta(seconds=1) if files else now
        if newest is None or (a.max, at) > newest[:2]:
            newest = (a.max, at, a.repo)
    if not good or newest is None:
        return Window(tuple(good), None, None, None, None, None, None, flushed)
    first = min(good, key=lambda b: b.stopped_at)
    _, start = segment_start(newest[0])
    return Window(
        tuple(good),
        first.stopped_at + timedelta(seconds=1),  # pgBackRest compares whole seconds
        newest[1],
        first.lsn_stop,
        int_to_lsn(start + SEGMENT_SIZE),
        newest[0],
        max(0.0, (now - newest[1]).total_seconds()),
        flushed,
    )


def plan_pitr(cfg: Config, target: Target, now: datetime) -> PitrPlan:
    """Check ``target`` against the recoverable window; ConfigError (one line, nothing
    changed) for a time in the future, before the earliest backup or past the archived WAL."""
    pitr = open_pitr(cfg)
    if pitr.tool.kube is not None:
        raise ConfigError(
            "physical restores on Kubernetes are not automated: follow docs/pitr.md "
            "(restore into a new volume from the database pod, then switch the StatefulSet)"
        )
    if target.kind == "time" and target.time is not None and target.time > now:
        raise ConfigError(
            f"target time {utc(target.time)} is in the future (now {utc(now)}): "
            "give a past time, or restore the latest state"
        )
    window = recoverable_window(cfg, now, flush=True)
    if window.earliest is None:
        raise ConfigError(
            f"no physical backup to restore from ({window.describe()}): run "
            "`dr backup --physical` first"
        )
    assert window.latest is not None
    assert window.latest_lsn is not None
    if target.kind == "time" and target.time is not None:
        if target.time < window.earliest:
            raise ConfigError(
                f"target time {utc(target.time)} is before the earliest backup (which ends at "
                f"{utc(window.earliest)}): no restore can reach it"
            )
        if target.time > window.latest:
            raise ConfigError(
                f"target time {utc(target.time)} is past the end of the archived WAL "
                f"({utc(window.latest)}): " + (window.flushed or "wait for archiving")
            )
    if target.kind == "lsn" and target.lsn is not None:
        pos = lsn_to_int(target.lsn)
        if window.earliest_lsn and pos < lsn_to_int(window.earliest_lsn):
            raise ConfigError(
                f"target LSN {target.lsn} is before the end of the earliest backup "
                f"({window.earliest_lsn}): no restore can reach it"
            )
        if pos > lsn_to_int(window.latest_lsn):
            raise ConfigError(
                f"target LSN {target.lsn} is past the end of the archived WAL ({window.latest_lsn})"
            )
    data = pitr.cfg.data_dir
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 100):  # never reuse the name of an earlier restore's directories
        suffix = stamp if n == 1 else f"{stamp}-{n}"
        new, aside = (data.with_name(f"{data.name}.{k}-{suffix}") for k in ("pitr", "pre-pitr"))
        if not new.exists() and not aside.exists():
            break
    return PitrPlan(target, window, data, new, aside, pitr.server.running(data))


# ---- the restore ----------------------------------------------------------------------------


def pitr_restore(
    cfg: Config,
    plan: PitrPlan,
    *,
    confirm: bool,
    extra_checks: Sequence[CriticalQuery] = (),
    say: Callable[[str], None] | None = None,
) -> PitrResult:
    """Carry out ``plan`` (module docstring); without ``confirm`` raise ConsentRequired and
    change nothing. VerificationFailed when a check fails (nothing switched)."""
    if not confirm:
        raise ConsentRequired("restore not confirmed: add --confirm to carry out this plan")
    pitr = open_pitr(cfg)
    note = say or (lambda _: None)
    if plan.new_dir.exists() or plan.aside_dir.exists():
        raise ConfigError(f"{plan.new_dir} or {plan.aside_dir} exists already: plan again")
    log_dir = pitr.cfg.config_dir / "log"
    t0 = time.monotonic()
    t = plan.target
    spare = free_port()
    try:
        note(f"restoring into {plan.new_dir}")
        if t.kind == "latest":
            pitr.tool.restore(plan.new_dir, kind="standby")
        else:
            value = (
                t.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
                if t.kind == "time" and t.time is not None
                else t.lsn
                if t.kind == "lsn"
                else t.xid
            )
            pitr.tool.restore(plan.new_dir, kind=t.kind, target=value, exclusive=t.exclusive)
        restored = time.monotonic()
        note(f"recovering to {t.describe()} on port {spare}")
        pitr.server.start(
            plan.new_dir, log_dir / "pitr-verify.log", port=spare,
            timeout_s=pitr.cfg.ready_timeout_s,
        )  # fmt: skip
        try:
            side = _on_port(pitr.url, spare)
            _wait_recovered(side, plan, pitr.cfg.ready_timeout_s, log_dir / "pitr-verify.log")
            recovered = time.monotonic()
            counts, checks = _verify(pitr, spare, [*pitr.queries, *extra_checks])
            reached = _replayed_until(side)
        finally:
            pitr.server.stop(plan.new_dir)
        bad = [c for c in checks if not c.ok]
        if bad:
            raise VerificationFailed(
                "the restored copy failed its checks ("
                + "; ".join(f"{c.name}: expected {c.expected}, got {c.actual}" for c in bad[:3])
                + ")"
            )
    except DRError as exc:  # say what a failure here left: nothing switched, nothing kept
        shutil.rmtree(plan.new_dir, ignore_errors=True)
        raise type(exc)(
            f"{exc}; the restored copy was removed, the live server was not touched"
        ) from exc
    except BaseException:
        shutil.rmtree(plan.new_dir, ignore_errors=True)
        raise
    note("switching over")
    _switch(pitr, plan, log_dir / "server.log")
    writable = time.monotonic()
    return PitrResult(
        plan,
        checks,
        counts,
        reached,
        restored - t0,
        recovered - restored,
        writable - t0,
        plan.aside_dir,
    )


def _on_port(url: DatabaseURL, port: int) -> DatabaseURL:
    params = dict(url.params, port=str(port))
    params.setdefault("host", "127.0.0.1")
    return DatabaseURL("postgresql", url.dbname, tuple(sorted(params.items())))


def _connect(url: DatabaseURL, what: str) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(url.conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        first = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else "error"
        raise CommandFailed(f"cannot connect to {url} to {what}: {first}") from exc


def _wait_recovered(url: DatabaseURL, plan: PitrPlan, timeout_s: float, log: Path) -> None:
    """Until recovery paused at the target (or, for latest, replayed the newest archived
    segment); CommandFailed with the server's reason if it stopped instead."""
    deadline = time.monotonic() + timeout_s
    newest = plan.window.newest_wal
    want = segment_start(newest)[1] if newest and plan.target.kind == "latest" else None
    last: object = None
    while time.monotonic() < deadline:
        try:
            with _connect(url, "follow recovery") as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state(), "
                    "pg_last_wal_replay_lsn()::text"
                ).fetchone()
        except (CommandFailed, psycopg.Error) as exc:  # the server may stop while we ask
            raise CommandFailed(
                f"recovery of the restored copy stopped: {_server_error(log)}"
            ) from exc
        assert row is not None
        if not row[0]:
            raise CommandFailed("the restored copy left recovery on its own (not paused)")
        if want is None and row[1] == "paused":
            return
        if want is not None and row[2] and lsn_to_int(str(row[2])) >= want and row[2] == last:
            return  # replayed into the newest archived segment, and nothing more comes
        last = row[2]
        time.sleep(0.5)
    raise CommandFailed(f"recovery did not reach {plan.target.describe()} in {timeout_s:g}s")


def _replayed_until(url: DatabaseURL) -> datetime | None:
    with _connect(url, "read the recovery point") as conn:
        row = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()
    value = row[0] if row else None
    return value.astimezone(UTC) if isinstance(value, datetime) else None


def _verify(
    pitr: Pitr, port: int, queries: Sequence[CriticalQuery]
) -> tuple[dict[str, dict[str, int]], list[Check]]:
    """Connect to every configured database of the server in the restored copy, count its
    tables, run the check queries (read-only: the copy is still in recovery)."""
    counts: dict[str, dict[str, int]] = {}
    checks: list[Check] = []
    for name, url in pitr.databases:
        side = _on_port(url, port)
        try:
            with _connect(side, "count rows in the restored copy") as conn:
                counts[name] = count_rows(conn)
            checks.append(Check(f"{name}: connect and count", "ok", "ok", True))
        except (DRError, psycopg.Error) as exc:
            checks.append(Check(f"{name}: connect and count", "ok", redact(str(exc)), False))
    checks += run_critical_queries(_on_port(pitr.url, port), list(queries))
    return counts, checks


def _switch(pitr: Pitr, plan: PitrPlan, log: Path) -> None:
    """Stop the live server, move the directories, start and promote; on failure put the
    previous data directory back, start it, and say which one is live."""
    server, data = pitr.server, plan.data_dir
    server.stop(data)
    data.rename(plan.aside_dir)
    try:
        plan.new_dir.rename(data)
        server.start(data, log, port=None, timeout_s=pitr.cfg.ready_timeout_s)
        _promote(pitr.url, plan, pitr.cfg.ready_timeout_s, log)
    except BaseException as exc:
        failed = data.with_name(plan.new_dir.name.replace(".pitr-", ".failed-pitr-"))
        with contextlib.suppress(DRError):
            server.stop(data)
        if data.exists():
            data.rename(failed)
        plan.aside_dir.rename(data)
        try:
            server.start(data, log, port=None, timeout_s=pitr.cfg.ready_timeout_s)
            live = f"the previous server is live again on {data}"
        except DRError as start_exc:
            live = f"NOTHING is live: the previous server in {data} did not start ({start_exc})"
        raise PermanentError(
            f"switch-over failed ({redact(str(exc)) or type(exc).__name__}); {live}; the "
            f"restored copy is kept in {failed}"
        ) from exc


def _promote(url: DatabaseURL, plan: PitrPlan, timeout_s: float, log: Path) -> None:
    """Wait for the restarted copy to reach the target again, promote it, and wait until a
    write succeeds."""
    live = _on_port(url, int(dict(url.params).get("port", 5432)))
    _wait_recovered(live, plan, timeout_s, log)
    with _connect(live, "promote the restored server") as conn:
        conn.execute("SELECT pg_promote(wait => true, wait_seconds => %s)", (int(timeout_s),))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with _connect(live, "write after promotion") as conn:
                conn.execute("CREATE TEMP TABLE dr_write_probe (x int)")
            return
        except (CommandFailed, psycopg.Error):
            time.sleep(0.2)
    raise CommandFailed(f"the promoted server did not accept writes within {timeout_s:g}s")
