"""pgBackRest, orchestrated: its configuration, its commands, and what its answers mean.

This module never reimplements WAL archiving or backup: it writes ``pgbackrest.conf`` from
``[pitr]``, runs pgBackRest as the server's OS user (``runuser`` when dr runs as root), and turns
``info``/``repo-ls``/``verify`` output into data: backups, the recoverable window, WAL gaps.
Repositories: repo1 is the local path when one is configured (fastest restores), then S3.

Secrets (the S3 key pair) go into the configuration file, mode 0600 and owned by the server's
user, never into an argument list; the server's ``archive_command`` reads the same file.
Every failed command becomes ``CommandFailed`` carrying pgBackRest's own one-line message.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tasks.core.config import PitrConfig
from tasks.core.errors import CommandFailed, ConfigError, TransientError

__all__ = [
    "SEGMENT_SIZE",
    "ArchiveRange",
    "PgBackRest",
    "PhysicalBackup",
    "StanzaInfo",
    "VerifyOutcome",
    "WalFile",
    "lsn_to_int",
    "segment_start",
]

SEGMENT_SIZE = 16 * 1024 * 1024  # PostgreSQL's default WAL segment size (initdb --wal-segsize)
BackupType = Literal["full", "diff", "incr"]
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_ERROR = re.compile(r"ERROR: \[(\d+)\]: (.*)")


def lsn_to_int(lsn: str) -> int:
    """``"0/3000050"`` -> its byte position; ConfigError for anything else."""
    hi, sep, lo = lsn.strip().partition("/")
    try:
        if not sep:
            raise ValueError(lsn)
        return (int(hi, 16) << 32) + int(lo, 16)
    except ValueError:
        raise ConfigError(f"{lsn!r} is not an LSN (expected the form 0/3000060)") from None


def int_to_lsn(pos: int) -> str:
    return f"{pos >> 32:X}/{pos & 0xFFFFFFFF:X}"


def segment_start(segment: str) -> tuple[int, int]:
    """A WAL segment name -> (timeline, LSN of its first byte)."""
    m = _SEGMENT.match(segment)
    if not m:
        raise ValueError(f"not a WAL segment name: {segment}")
    tli, log, seg = (int(g, 16) for g in m.groups())
    return tli, (log << 32) + seg * SEGMENT_SIZE


@dataclass(frozen=True)
class PhysicalBackup:
    """One pgBackRest backup set, as ``info`` reports it."""

    label: str
    type: BackupType
    repo: int
    started_at: datetime
    stopped_at: datetime  # the earliest time a restore of this backup can stop at
    lsn_start: str
    lsn_stop: str
    size: int  # database size
    repo_size: int  # stored (compressed, and for diff/incr only the changes)
    prior: str | None
    error: bool


@dataclass(frozen=True)
class ArchiveRange:
    repo: int
    archive_id: str
    min: str | None
    max: str | None


@dataclass(frozen=True)
class WalFile:
    segment: str
    archived_at: datetime


@dataclass(frozen=True)
class StanzaInfo:
    stanza: str
    status: str  # pgBackRest's status message ("ok", "no valid backups", ...)
    backups: tuple[PhysicalBackup, ...]  # oldest first
    archives: tuple[ArchiveRange, ...]
    backup_running: bool = False  # pgBackRest's backup lock is held (a backup or expire runs)


@dataclass(frozen=True)
class VerifyOutcome:
    """``pgbackrest verify`` plus a gap check of the archived WAL, per repository."""

    ok: bool
    lines: tuple[str, ...]  # what pgBackRest printed (text output)
    gaps: tuple[str, ...]  # "000000010000000000000004..000000010000000000000005 (repo1)"


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def parse_info(raw: str, stanza: str) -> StanzaInfo:
    """``pgbackrest info --output=json`` -> StanzaInfo (backups oldest first)."""
    try:
        data = json.loads(raw)
        [entry] = [s for s in data if s.get("name") == stanza]
        backups = tuple(
            PhysicalBackup(
                label=b["label"],
                type=b["type"],
                repo=int(b["database"]["repo-key"]),
                started_at=_ts(b["timestamp"]["start"]),
                stopped_at=_ts(b["timestamp"]["stop"]),
                lsn_start=b["lsn"]["start"],
                lsn_stop=b["lsn"]["stop"],
                size=int(b["info"]["size"]),
                repo_size=int(b["info"]["repository"]["delta"]),
                prior=b.get("prior"),
                error=bool(b.get("error", False)),
            )
            for b in entry.get("backup", [])
        )
        archives = tuple(
            ArchiveRange(int(a["database"]["repo-key"]), a["id"], a.get("min"), a.get("max"))
            for a in entry.get("archive", [])
        )
        status = str(entry["status"]["message"])
        running = bool(entry["status"].get("lock", {}).get("backup", {}).get("held", False))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CommandFailed(f"pgbackrest info: unexpected output ({exc})") from None
    ordered = tuple(sorted(backups, key=lambda b: b.stopped_at))
    return StanzaInfo(stanza, status, ordered, archives, running)


def find_gaps(segments: Sequence[str]) -> list[tuple[str, str]]:
    """Missing segments between consecutive archived ones of the same timeline:
    [(first missing, last missing)]. 16 MB segments: 256 per log file."""
    per_tli: dict[int, list[int]] = {}
    for s in segments:
        m = _SEGMENT.match(s)
        if m:
            tli, log, seg = (int(g, 16) for g in m.groups())
            per_tli.setdefault(tli, []).append(log * 256 + seg)
    gaps = []
    for tli, nums in per_tli.items():
        nums.sort()
        for a, b in itertools.pairwise(nums):
            if b > a + 1:
                gaps.append((_name(tli, a + 1), _name(tli, b - 1)))
    return gaps


def _name(tli: int, n: int) -> str:
    return f"{tli:08X}{n // 256:08X}{n % 256:08X}"


class PgBackRest:
    """pgBackRest for one stanza, as configured by ``[pitr]``.

    ``port`` is the server's port and ``kube`` (namespace, pod, container) switches the command
    runner to ``kubectl exec`` into the database pod (documented in docs/pitr.md, not tested here).
    """

    def __init__(
        self,
        pitr: PitrConfig,
        *,
        port: int,
        s3_bucket: str | None = None,
        kube: tuple[str, str, str | None] | None = None,
    ) -> None:
        self.cfg = pitr
        self.port = port
        self.s3_bucket = s3_bucket if pitr.s3 else None
        self.kube = kube
        self.conf = pitr.config_dir / "pgbackrest.conf"

    # ---- configuration ----------------------------------------------------------------------

    def repos(self) -> list[tuple[int, str]]:
        """(repo number, description) in pgBackRest's order."""
        out: list[tuple[int, str]] = []
        if self.cfg.repo_path is not None:
            out.append((len(out) + 1, f"local {self.cfg.repo_path}"))
        if self.s3_bucket:
            out.append((len(out) + 1, f"s3://{self.s3_bucket}/{self.cfg.s3_prefix}"))
        return out

    def render_config(self, env: dict[str, str] | None = None) -> str:
        """The text of pgbackrest.conf (with the S3 key pair from ``env``: keep it private)."""
        c = self.cfg
        source = os.environ if env is None else env
        g = [
            f"log-path={c.config_dir / 'log'}",
            f"lock-path={c.config_dir / 'lock'}",
            f"spool-path={c.config_dir / 'spool'}",
            "log-level-console=warn",
            "log-level-file=info",
            "compress-type=zst",
            f"process-max={c.process_max or os.cpu_count() or 1}",
            "start-fast=y",  # an immediate checkpoint: backups start now, not at the next one
            f"archive-timeout={max(60, c.archive_timeout_s * 2)}",  # wait for archive-push
        ]
        for n, _ in self.repos():
            r = f"repo{n}"
            # time-based retention keeps enough full backups to reach window_days back
            g += [f"{r}-retention-full-type=time", f"{r}-retention-full={c.window_days}"]
            if c.repo_path is not None and n == 1:
                g.append(f"{r}-path={c.repo_path}")
                continue
            key, secret = source.get(c.s3_key_env), source.get(c.s3_secret_env)
            if not key or not secret:
                raise ConfigError(
                    f"pitr.s3: set {c.s3_key_env} and {c.s3_secret_env} (the S3 key pair "
                    "pgBackRest stores in its private configuration file)"
                )
            g += [
                f"{r}-type=s3",
                f"{r}-path=/{c.s3_prefix.strip('/')}",
                f"{r}-s3-bucket={self.s3_bucket}",
                f"{r}-s3-endpoint={c.s3_endpoint}",
                f"{r}-storage-port={c.s3_port}",
                f"{r}-s3-region={c.s3_region}",
                f"{r}-s3-uri-style={c.s3_uri_style}",
                f"{r}-storage-verify-tls={'y' if c.s3_verify_tls else 'n'}",
                f"{r}-s3-key={key}",
                f"{r}-s3-key-secret={secret}",
            ]
        s = [f"pg1-path={c.data_dir}", f"pg1-port={self.port}"]
        if c.socket_dir is not None:
            s.append(f"pg1-socket-path={c.socket_dir}")
        return "\n".join(["[global]", *g, "", f"[{c.stanza}]", *s, ""])

    def write_config(self) -> Path:
        """Write pgbackrest.conf (0600, owned by the server's user) and its working dirs."""
        if self.kube is not None:
            raise ConfigError(
                "pitr.kubernetes_pod: pgbackrest.conf lives in the database pod's image or a "
                "mounted Secret there (docs/pitr.md); dr does not write it"
            )
        text = self.render_config()
        c = self.cfg
        for d in (
            c.config_dir,
            c.config_dir / "log",
            c.config_dir / "lock",
            c.config_dir / "spool",
        ):
            d.mkdir(parents=True, exist_ok=True)
            self._own(d, 0o700)
        if c.repo_path is not None:
            c.repo_path.mkdir(parents=True, exist_ok=True)
            self._own(c.repo_path, 0o750)
        tmp = self.conf.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        self._own(tmp, 0o600)
        tmp.replace(self.conf)
        return self.conf

    def _own(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        if os.geteuid() == 0 and self.cfg.os_user != "root":
            shutil.chown(path, self.cfg.os_user, self.cfg.os_user)

    def archive_command(self) -> str:
        return f"pgbackrest --config={self.conf} --stanza={self.cfg.stanza} archive-push %p"

    # ---- running commands -------------------------------------------------------------------

    def as_server_user(self, argv: list[str]) -> list[str]:
        """``argv`` run as the server's OS user (runuser when root, kubectl exec in a pod)."""
        if self.kube is not None:
            ns, pod, container = self.kube
            prefix = ["kubectl", "exec", "-n", ns, pod]
            return [*prefix, *(["-c", container] if container else []), "--", *argv]
        user = self.cfg.os_user
        current = pwd.getpwuid(os.geteuid()).pw_name
        if current == user:
            return argv
        if os.geteuid() == 0:
            return ["runuser", "-u", user, "--", *argv]
        raise ConfigError(
            f"pitr.os_user is {user!r} but dr runs as {current!r}: run dr as {user} or as root"
        )

    def run(self, command: str, *args: str, timeout_s: float = 3600) -> str:
        """``pgbackrest <command> <args>``; its stdout. CommandFailed with pgBackRest's message."""
        conf = f"--config={self.conf}"
        argv = self.as_server_user(
            ["pgbackrest", conf, f"--stanza={self.cfg.stanza}", command, *args]
        )
        if self.kube is None and not self.conf.exists():
            raise ConfigError(f"{self.conf} does not exist: run `dr pitr setup` first")
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except FileNotFoundError:
            raise ConfigError(
                f"{argv[0]} not found: install pgBackRest (Debian package pgbackrest)"
            ) from None
        except subprocess.TimeoutExpired:
            raise TransientError(
                f"pgbackrest {command} still running after {timeout_s:g}s"
            ) from None
        if proc.returncode != 0:
            raise _command_failed(command, proc.returncode, proc.stderr + proc.stdout)
        return proc.stdout

    # ---- the commands -----------------------------------------------------------------------

    def stanza_create(self) -> None:
        self.run("stanza-create")  # idempotent: a no-op on an existing, matching stanza

    def check(self) -> None:
        """Archiving works end to end: forces a WAL switch and waits for it in every repo."""
        self.run("check")

    def backup(self, kind: BackupType, repo: int) -> None:
        self.run("backup", f"--type={kind}", f"--repo={repo}")

    def info(self) -> StanzaInfo:
        return parse_info(self.run("info", "--output=json"), self.cfg.stanza)

    def wal_files(self, repo: int, archive_id: str) -> list[WalFile]:
        """Every archived WAL segment of ``archive_id`` in ``repo``, with its archive time."""
        raw = self.run(
            "repo-ls",
            f"--repo={repo}",
            "--recurse",
            "--output=json",
            f"archive/{self.cfg.stanza}/{archive_id}",
        )
        try:
            entries: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise CommandFailed(f"pgbackrest repo-ls: unexpected output ({exc})") from None
        files = []
        for path, e in entries.items():
            name = path.rsplit("/", 1)[-1].split("-", 1)[0]
            if e.get("type") == "file" and _SEGMENT.match(name) and "." not in name:
                files.append(WalFile(name, _ts(int(e["time"]))))
        return sorted(files, key=lambda f: f.segment)

    def verify(self) -> VerifyOutcome:
        """``pgbackrest verify`` (checksums of every backup file and WAL segment) plus the gap
        check pgBackRest does not fail on: a missing segment breaks every recovery through it."""
        text = self.run("verify", "--output=text", "--verbose")
        lines = tuple(ln.rstrip() for ln in text.splitlines() if ln.strip())
        info = self.info()
        # a set that is still being written shows as in-progress: not a fault while pgBackRest
        # holds its backup lock (the nightly backup running), a killed backup's leftover after
        # (the next backup resumes or discards it; until then the last backup attempt failed)
        pending = "status: in-progress" if info.backup_running else None
        bad = [ln for ln in lines if ln.strip().startswith("status:") and "ok" not in ln]
        bad += [
            ln
            for ln in lines
            if "backup:" in ln and "status: valid" not in ln and not (pending and pending in ln)
        ]
        if pending and any(pending in ln for ln in lines):
            lines += ("note: a backup is running (pgBackRest holds its backup lock): the set "
                      "in-progress is that backup, not a failed one",)  # fmt: skip
        gaps = []
        for a in info.archives:
            segs = [w.segment for w in self.wal_files(a.repo, a.archive_id)]
            gaps += [f"{lo}..{hi} (repo{a.repo})" for lo, hi in find_gaps(segs)]
        return VerifyOutcome(not bad and not gaps, lines, tuple(gaps))

    def restore(
        self,
        into: Path,
        *,
        kind: Literal["standby", "time", "lsn", "xid"],
        target: str | None = None,
        exclusive: bool = False,
        backup_set: str | None = None,
    ) -> None:
        """Restore into the new, empty directory ``into``; with a target, recovery pauses there
        (hot standby, read-only) so that it can be verified before anything is promoted."""
        args = [f"--pg1-path={into}", f"--type={kind}"]
        if target is not None:
            args += [f"--target={target}", "--target-action=pause"]
        if exclusive:
            args.append("--target-exclusive")
        if backup_set:
            args.append(f"--set={backup_set}")
        self.run("restore", *args)


def _command_failed(command: str, code: int, output: str) -> CommandFailed | TransientError:
    """pgBackRest's own message, one line; a held lock is transient (another backup runs)."""
    found = _ERROR.findall(output)
    message = f"[{found[-1][0]}] {found[-1][1]}" if found else _last_line(output, code)
    text = f"pgbackrest {command} failed: {message}"
    if found and found[-1][0] in ("050",):  # LockAcquireError
        return TransientError(text)
    return CommandFailed(text)


def _last_line(output: str, code: int) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {code}"
