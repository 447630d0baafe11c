"""``dr audit``: the append-only trail of destructive actions (tasks/core/audit.py), read from
the backup locations. Registered on ``flows.cli``'s app (imported at the end of flows/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from flows.cli import (
    BackupDirOpt,
    DebugOpt,
    JsonOpt,
    S3BucketOpt,
    S3PrefixOpt,
    _emit_json,
    _errors,
    _locations,
    _parse_time,
    app,
    err,
    out,
)
from tasks.core.audit import read_audit
from tasks.core.config import load_config
from tasks.core.environment import build_catalog


@app.command("audit")
def audit_cmd(
    backup_dir: BackupDirOpt = Path("./backups"),
    s3_bucket: S3BucketOpt = None,
    s3_prefix: S3PrefixOpt = "database-backups",
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Read the locations of this dr.toml instead."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only records at or after this UTC time (ISO 8601)."),
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Every restore, switch-over, drop, secret rotation, retention delete and scale: when,
    what, which backup, who approved it, and how it ended (oldest first)."""
    with _errors(debug):
        locations = (
            list(build_catalog(load_config(config)).locations)
            if config
            else _locations(backup_dir, s3_bucket, s3_prefix)
        )
        since_t = _parse_time(since, "--since") if since else None
        records, unreadable = read_audit(locations, since=since_t)
        if as_json:
            _emit_json(
                {
                    "records": [
                        {
                            "at": r.at.isoformat(),
                            "action": r.action,
                            "target": r.target,
                            "backup_id": r.backup_id,
                            "outcome": r.outcome,
                            "approved_by": r.approved_by,
                            "actor": r.actor,
                            "environment": r.environment,
                            "flow_run": r.flow_run,
                            "detail": r.detail,
                        }
                        for r in records
                    ],
                    "unreadable": unreadable,
                }
            )
            return
        if not records:
            out.print("no audit records in " + ", ".join(loc.url for loc in locations))
        else:
            table = Table(
                "AT (UTC)", "ACTION", "TARGET", "BACKUP", "OUTCOME", "APPROVED BY", "ACTOR",
                box=None, pad_edge=False,
            )  # fmt: skip
            for r in records:
                style = "green" if r.ok else "bold red"
                table.add_row(
                    f"{r.at:%Y-%m-%d %H:%M:%S}", r.action, r.target, r.backup_id or "-",
                    Text(r.outcome, style=style), r.approved_by, r.actor,
                )  # fmt: skip
            out.print(table)
        if unreadable:
            err.print(f"dr: warning: {unreadable} audit record(s) could not be read")
