"""``dr pitr`` (setup, info, verify) and the physical paths of ``dr backup`` / ``dr restore``.

Registered by the last line of flows/cli.py; like the rest of ``dr`` it calls the core directly
(no Prefect server). Exit codes as in flows/cli.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.cli import (
    EXIT_FAILED,
    DebugOpt,
    JsonOpt,
    _emit_json,
    _errors,
    _parse_time,
    _require_consent,
    app,
    err,
    out,
)
from tasks.core import units
from tasks.core.config import Config, load_config
from tasks.core.engines.pgbackrest import BackupType, lsn_to_int
from tasks.core.errors import ConfigError, DRError

if TYPE_CHECKING:
    from types import ModuleType

    from tasks.core.pitr import Target, Window


def _pitr() -> ModuleType:
    """tasks.core.pitr, imported on use: it brings psycopg (0.1 s) that `dr redis backup` and
    `dr --help` should not pay."""
    from tasks.core import pitr

    return pitr


pitr_app = typer.Typer(
    help="Physical backups and point-in-time recovery through pgBackRest (docs/pitr.md).",
    no_args_is_help=True,
)
app.add_typer(pitr_app, name="pitr")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", envvar="DR_CONFIG", help="The environment's dr.toml.")
]


def _pitr_config(config: Path | None) -> Config:
    cfg = load_config(config)
    if cfg.pitr is None:
        raise ConfigError(
            "pgBackRest is not configured: add a [pitr] section to dr.toml (docs/pitr.md) "
            "and run `dr pitr setup --config dr.toml`"
        )
    return cfg


@pitr_app.command("setup")
def setup_cmd(
    config: ConfigOpt = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart", help="Restart the server if archive_mode/wal_level need it (downtime)."
        ),
    ] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write pgbackrest.conf, create the stanza, set archive_command, run pgbackrest check."""
    with _errors(debug):
        r = _pitr().setup(_pitr_config(config), restart=restart)
        if as_json:
            _emit_json(
                {
                    "config_file": str(r.config_file),
                    "repositories": r.repos,
                    "archive_command": r.archive_command,
                    "applied": r.applied,
                    "manual_lines": r.manual_lines,
                    "restart_needed": r.restart_needed,
                    "checked": r.checked,
                }
            )
        else:
            out.print(f"pgBackRest configuration written to {r.config_file} (mode 0600)")
            for repo in r.repos:
                out.print(f"  repository: {repo}")
            if r.applied:
                out.print(f"  archive_command set (ALTER SYSTEM + reload): {r.archive_command}")
            else:
                out.print("  add these lines to postgresql.conf, then reload the server:")
                for line in r.manual_lines:
                    out.print(f"    {line}")
            if r.restart_needed:
                out.print(
                    "  archive_mode (or wal_level) changes only with a restart: restart the "
                    "server, or rerun with --restart"
                )
            if r.checked:
                out.print("  pgbackrest check: WAL archiving works")
        if not r.checked:
            raise typer.Exit(EXIT_FAILED)


@pitr_app.command("info")
def info_cmd(config: ConfigOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Physical backups and the recoverable window (the newest archived WAL's age is the RPO)."""
    with _errors(debug):
        w = _pitr().recoverable_window(_pitr_config(config), datetime.now(UTC))
        if as_json:
            _emit_json(window_json(w))
            return
        for line in physical_lines(w):
            out.print(line)


@pitr_app.command("verify")
def verify_cmd(config: ConfigOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """pgbackrest verify plus a check for gaps in the archived WAL; exit 1 on any problem."""
    with _errors(debug):
        v = _pitr().verify_repository(_pitr_config(config))
        if as_json:
            _emit_json({"ok": v.ok, "gaps": list(v.gaps), "output": list(v.lines)})
        else:
            for line in v.lines:
                out.print(line)
            for gap in v.gaps:
                err.print(f"dr: error: WAL gap: {gap} missing: no recovery can pass through it")
            out.print("verify: ok" if v.ok else "verify: FAILED")
        if not v.ok:
            raise typer.Exit(EXIT_FAILED)


# ---- what dr backup / dr restore call -----------------------------------------------------


def run_physical_backup(config: Path | None, kind: str, as_json: bool) -> None:
    if kind not in ("full", "diff", "incr"):
        raise ConfigError(f"--type {kind!r}: choose full, diff or incr")
    kind_: BackupType = kind  # type: ignore[assignment]
    r = _pitr().backup_physical(_pitr_config(config), kind_)
    if as_json:
        _emit_json(
            {
                "backups": [
                    {
                        "label": b.label,
                        "type": b.type,
                        "repo": b.repo,
                        "size": b.size,
                        "stored": b.repo_size,
                    }
                    for b in r.backups
                ],
                "duration_s": round(r.duration_s, 3),
            }
        )
        return
    for b in r.backups:
        out.print(
            f"physical backup {b.label}: {b.type}, {units.size(b.size)} database, "
            f"{units.size(b.repo_size)} stored in repo{b.repo}"
        )
    out.print(f"  in {r.duration_s:.1f}s")


def target_from_flags(
    time_: str | None, lsn: str | None, xid: str | None, latest: bool
) -> Target | None:
    """The physical target the flags name, or None (a logical restore)."""
    given = [
        n for n, v in (("--target-time", time_), ("--target-lsn", lsn), ("--target-xid", xid)) if v
    ]
    if len(given) > 1:
        raise ConfigError(f"choose one target: got {', '.join(given)}")
    if time_:
        return _pitr().Target("time", time=_parse_time(time_, "--target-time"))
    if lsn:
        lsn_to_int(lsn)  # one clear line for a malformed LSN
        return _pitr().Target("lsn", lsn=lsn)
    if xid:
        if not xid.isdigit():
            raise ConfigError(f"--target-xid {xid!r}: a transaction id is a number")
        return _pitr().Target("xid", xid=xid)
    return _pitr().Target("latest") if latest else None


def run_physical_restore(
    config: Path | None, target: Target, *, confirm: bool, as_json: bool
) -> None:
    cfg = _pitr_config(config)
    plan = _pitr().plan_pitr(cfg, target, datetime.now(UTC))
    _require_consent(confirm, plan.describe(), as_json, "point-in-time restore plan")
    r = _pitr().pitr_restore(cfg, plan, confirm=True, say=None if as_json else err.print)
    if as_json:
        _emit_json(
            {
                "target": target.describe(),
                "reached": r.reached.isoformat() if r.reached else None,
                "restore_s": round(r.restore_s, 3),
                "recover_s": round(r.recover_s, 3),
                "writable_s": round(r.writable_s, 3),
                "kept_as": str(r.kept_as),
                "checks": [{"name": c.name, "ok": c.ok, "actual": c.actual} for c in r.checks],
                "counts": r.counts,
            }
        )
        return
    out.print(
        f"restored to {target.describe()}"
        + (f" (last transaction replayed: {units.utc(r.reached)})" if r.reached else "")
    )
    out.print(
        f"  verified: {sum(c.ok for c in r.checks)}/{len(r.checks)} checks, "
        f"{sum(sum(t.values()) for t in r.counts.values())} rows in "
        f"{sum(len(t) for t in r.counts.values())} tables"
    )
    out.print(
        f"  restore {r.restore_s:.1f}s, recovery {r.recover_s:.1f}s; restore start -> accepts "
        f"writes {r.writable_s:.1f}s"
    )
    out.print(f"  previous data directory kept as {r.kept_as} (remove it once satisfied)")


def physical_listing(config: Path | None) -> Window | None:
    """For ``dr restore --list``: the window when [pitr] is configured, else None; a failure
    to read it is a warning, never a reason to hide the logical backups."""
    if config is None:
        return None
    try:
        cfg = load_config(config)
        if cfg.pitr is None:
            return None
        return _pitr().recoverable_window(cfg, datetime.now(UTC))
    except DRError as exc:
        err.print(f"dr: warning: physical backups not listed: {exc}")
        return None


def physical_rows(w: Window, now: datetime) -> list[tuple[str, ...]]:
    """Rows in ``dr restore --list``'s columns, newest first."""
    return [
        (
            b.label,
            "(cluster)",
            f"pgbackrest-{b.type}",
            units.utc(b.stopped_at),
            units.age((now - b.stopped_at).total_seconds()),
            units.size(b.repo_size),
            f"repo{b.repo}",
            "-",
        )
        for b in reversed(w.backups)
    ]


def physical_json(w: Window | None) -> list[dict[str, Any]]:
    """``dr restore --list --json`` entries, in the logical entries' keys (kind "physical")."""
    if w is None:
        return []
    now = datetime.now(UTC)
    return [
        {
            "backup_id": b.label,
            "database": None,
            "engine": "pgbackrest",
            "kind": f"physical-{b.type}",
            "taken_at": b.stopped_at.isoformat(),
            "age_s": round((now - b.stopped_at).total_seconds()),
            "size": b.repo_size,
            "locations": [f"repo{b.repo}"],
            "verified": None,
            "recoverable_window": window_json(w) | {"backups": None},
        }
        for b in reversed(w.backups)
    ]


def physical_lines(w: Window) -> list[str]:
    lines = [
        f"{b.label}  {b.type:<4}  {units.utc(b.stopped_at)}  {units.size(b.size)} "
        f"({units.size(b.repo_size)} stored, repo{b.repo})"
        for b in reversed(w.backups)
    ]
    return [*lines, w.describe()] if lines else ["no physical backups", w.describe()]


def window_json(w: Window) -> dict[str, Any]:
    return {
        "earliest": w.earliest.isoformat() if w.earliest else None,
        "latest": w.latest.isoformat() if w.latest else None,
        "earliest_lsn": w.earliest_lsn,
        "latest_lsn": w.latest_lsn,
        "newest_wal": w.newest_wal,
        "newest_wal_age_s": None if w.newest_wal_age_s is None else round(w.newest_wal_age_s),
        "backups": [
            {
                "label": b.label,
                "type": b.type,
                "repo": b.repo,
                "taken_at": b.stopped_at.isoformat(),
                "size": b.size,
                "stored": b.repo_size,
            }
            for b in reversed(w.backups)
        ],
    }
