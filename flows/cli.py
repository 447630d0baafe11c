"""The ``dr`` command: the runbook's manual commands, fast, with no Prefect server needed.

Exit codes: 0 success; 1 the operation failed (a backup, verification or restore did not
succeed); 2 bad usage or configuration, or consent missing (nothing was changed); 130 interrupted.
Errors are one line on stderr (``--debug`` adds the traceback). No password is ever printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from tasks.core import units
from tasks.core.audit import actor
from tasks.core.backup import backup_database
from tasks.core.catalog import BackupEntry, Catalog, local_entry_from_path, utcnow
from tasks.core.config import load_config
from tasks.core.crypto import EncryptionKey
from tasks.core.dburl import parse_database_url, redact
from tasks.core.errors import ConfigError, ConsentRequired, DRError
from tasks.core.storage import Storage
from tasks.core.storage.local import LocalStorage

app = typer.Typer(
    name="dr",
    help="Disaster recovery that runs: verified backups, safe restores, measured recovery.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# no markup: messages quote dr.toml sections ("[pitr]") and details that rich would eat as tags
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
if not out.is_terminal:
    out.width = 250  # pipes and logs get whole lines, not tables wrapped at 80 columns

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
ENCRYPTION_KEY_ENV = "DR_ENCRYPTION_KEY"

# ---- shared options -------------------------------------------------------------------------

DatabaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="DATABASE_URL",
        show_envvar=True,
        help="postgresql://user@host:port/db or sqlite:///path/app.db",
    ),
]
BackupDirOpt = Annotated[
    Path,
    typer.Option("--backup-dir", envvar="DR_BACKUP_DIR", help="Local backup directory."),
]
S3BucketOpt = Annotated[
    str | None,
    typer.Option(
        "--s3-bucket",
        envvar="DR_S3_BUCKET",
        help="S3 bucket (credentials, region, endpoint from the AWS chain).",
    ),
]
S3PrefixOpt = Annotated[
    str, typer.Option("--s3-prefix", help="Key prefix for backups in the bucket.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary for scripts.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
WorkDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--work-dir",
        help="Scratch space for decompressed archives and SQLite copies (default: system temp).",
    ),
]


@contextlib.contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Every failure becomes one line on stderr and a documented exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("dr: interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (ConfigError, ConsentRequired) as exc:
        if debug:
            traceback.print_exc()
        err.print(f"dr: error: {redact(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None
    except DRError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"dr: error: {redact(str(exc))}")
        raise typer.Exit(EXIT_FAILED) from None
    except Exception as exc:
        if debug:
            traceback.print_exc()
        tool = _missing_tool(exc)
        if tool:  # this machine lacks a program dr runs: a setup matter, like a bad config
            err.print(f"dr: error: {tool} not found on PATH: {_TOOL_HINTS.get(tool, _NO_HINT)}")
            raise typer.Exit(EXIT_USAGE) from None
        err.print(
            f"dr: unexpected error: {redact(f'{type(exc).__name__}: {exc}')} (rerun with "
            "--debug for the traceback)"
        )
        raise typer.Exit(EXIT_FAILED) from None


_PG_TOOLS = "install the PostgreSQL client tools of the server's major version or newer "
_PG_TOOLS += "(Debian: postgresql-client-NN), or put their bin directory on PATH"
_TOOL_HINTS = {
    **dict.fromkeys(["pg_dump", "pg_restore", "psql", "pg_amcheck", "pg_dumpall"], _PG_TOOLS),
    "pgbackrest": "install pgBackRest (Debian: pgbackrest) on this machine",
    "terraform": "install terraform, or leave platform.terraform_dir unset",
}
_NO_HINT = "install it, or put its directory on PATH"


def _missing_tool(exc: BaseException) -> str | None:
    """The program a subprocess could not start because it is not installed, if that is
    what ``exc`` says (a bare name, looked up on PATH)."""
    name = exc.filename if isinstance(exc, FileNotFoundError) else None
    return name if isinstance(name, str) and name and os.sep not in name else None


def _locations(backup_dir: Path, s3_bucket: str | None, s3_prefix: str) -> list[Storage]:
    locs: list[Storage] = [LocalStorage(backup_dir)]
    if s3_bucket:
        from tasks.core.storage.s3 import S3Storage  # boto3 costs 0.1 s to import: only if used

        sse, kms = os.environ.get("DR_S3_SSE") or None, os.environ.get("DR_S3_KMS_KEY_ID") or None
        locs.append(S3Storage(s3_bucket, s3_prefix, sse=sse, kms_key_id=kms))
    return locs


def _catalog(locations: list[Storage]) -> Catalog:
    """The catalog over ``locations``; backups are encrypted with (and encrypted backups read
    with) the key in $DR_ENCRYPTION_KEY when it is set."""
    return Catalog(locations, EncryptionKey.from_env(ENCRYPTION_KEY_ENV))


class _Bar:
    """Advanced with byte counts (``bar(n)``); ``stage(text)`` replaces its label."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar, self._task = bar, task

    def __call__(self, n: int) -> None:
        self._bar.advance(self._task, n)

    def stage(self, text: str) -> None:
        self._bar.update(self._task, description=text)


@contextlib.contextmanager
def _progress(label: str, total: int | None = None) -> Iterator[_Bar | None]:
    """A rich progress bar on a terminal; nothing at all when stderr is not one."""
    if not err.is_terminal:
        yield None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err, transient=True) as bar:
        yield _Bar(bar, bar.add_task(label, total=total))


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _require_consent(
    confirm: bool, plan: list[str], as_json: bool, what: str = "restore plan", **facts: str
) -> None:
    """Without ``--confirm``: show the plan (``facts`` go into the JSON form) and raise
    ConsentRequired (exit 2), having changed nothing."""
    if confirm:
        return
    if as_json:
        _emit_json({"confirmed": False, **facts, "plan": plan})
    else:
        out.print(f"{what} (nothing changed):")
        for line in plan:
            out.print(f"  {line}")
    raise ConsentRequired("restore not confirmed: add --confirm to carry out this plan")


def _parse_time(value: str, flag: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{flag}: cannot read {value!r} as a time; use ISO 8601 such as 2024-01-15T14:30:00Z"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # a time without zone is UTC


# ---- dr backup ------------------------------------------------------------------------------


@app.command()
def backup(
    database_url: DatabaseUrlOpt = None,
    backup_dir: BackupDirOpt = Path("backups"),
    s3_bucket: S3BucketOpt = None,
    s3_prefix: S3PrefixOpt = "database-backups",
    retention_days: Annotated[
        int | None,
        typer.Option(
            "--retention-days",
            min=1,
            help="Delete backups older than N days (never the newest good one).",
        ),
    ] = None,
    verify_only: Annotated[
        bool, typer.Option("--verify-only", help="Verify existing backups; take none.")
    ] = False,
    latest: Annotated[
        bool, typer.Option("--latest", help="With --verify-only: only the newest per database.")
    ] = False,
    require_immutable: Annotated[
        bool,
        typer.Option(
            "--require-immutable",
            help="With --verify-only: a backup is safe only with a copy in an S3 bucket with "
            "Object Lock (default retention).",
        ),
    ] = False,
    versioned_buckets: Annotated[
        list[str] | None,
        typer.Option(
            "--versioned-bucket",
            metavar="BUCKET",
            help="With --verify-only: also check that this bucket (e.g. the models bucket) has "
            "versioning on. Repeatable.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    work_dir: WorkDirOpt = None,
    physical: Annotated[
        bool,
        typer.Option("--physical", help="A pgBackRest backup of the [pitr] server (--config)."),
    ] = False,
    backup_type: Annotated[
        str | None,
        typer.Option("--type", help="With --physical: full (default), diff or incr."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", envvar="DR_CONFIG", help="dr.toml (for --physical)."),
    ] = None,
) -> None:
    """Take a verified backup of DATABASE_URL (or, with --verify-only, check existing ones)."""
    with _errors(debug):
        if physical:
            from flows.cli_pitr import run_physical_backup

            run_physical_backup(config, backup_type or "full", as_json)
            return
        if backup_type is not None:
            raise ConfigError("--type goes with --physical (a logical backup is always full)")
        catalog = _catalog(_locations(backup_dir, s3_bucket, s3_prefix))
        if verify_only:
            _verify(
                catalog,
                latest=latest,
                as_json=as_json,
                work_dir=work_dir,
                require_immutable=require_immutable,
                versioned_buckets=versioned_buckets or [],
            )
            return
        if require_immutable or versioned_buckets:
            raise ConfigError("--require-immutable/--versioned-bucket go with --verify-only")
        if latest:
            raise ConfigError("--latest goes with --verify-only (or with dr restore)")
        if not database_url:
            raise ConfigError("no database: give --database-url or set DATABASE_URL")
        url = parse_database_url(database_url)
        with _progress(f"backup {url.dbname}") as progress:
            result = backup_database(
                url, catalog, progress=progress, retention_days=retention_days, work_dir=work_dir
            )
        m = result.manifest
        deleted = [d for d in result.retention if not d.keep]
        if as_json:
            _emit_json(
                {
                    "backup_id": m.backup_id,
                    "database": m.database,
                    "engine": m.engine,
                    "size": m.size,
                    "sha256": m.artefacts[0].sha256,
                    "tables": len(m.counts),
                    "rows": sum(m.counts.values()),
                    "consistent_at": m.consistent_at.isoformat(),
                    "duration_s": round(result.duration_s, 3),
                    "locations": result.committed,
                    "failed": result.failed,
                    "swept": result.swept,
                    "retention_deleted": [d.backup_id for d in deleted],
                    "housekeeping_error": result.housekeeping_error,
                }
            )
        else:
            out.print(
                f"backup {m.backup_id}: {m.engine} database {m.database!r}, "
                f"{len(m.counts)} tables, {sum(m.counts.values())} rows, "
                f"{units.size(m.size)} in {result.duration_s:.1f}s"
            )
            for loc in result.committed:
                out.print(f"  stored in {loc}")
            for d in deleted:
                out.print(f"  retention: deleted {d.backup_id} ({d.reason})")
            for s in result.swept:
                out.print(f"  swept leftovers of an unfinished backup: {s}")
        for loc, why in result.failed.items():
            err.print(f"dr: error: backup not stored in {loc}: {redact(why)}")
        if result.housekeeping_error:
            err.print(
                f"dr: error: backup stored, but housekeeping (sweep/retention) failed: "
                f"{redact(result.housekeeping_error)}"
            )
        if not result.complete:
            raise typer.Exit(EXIT_FAILED)


def _verify(
    catalog: Catalog,
    *,
    latest: bool,
    as_json: bool,
    work_dir: Path | None,
    require_immutable: bool = False,
    versioned_buckets: list[str] | None = None,
) -> None:
    # imported on use, as in restore: psycopg and pg_restore's helpers cost a tenth of a second
    # that `dr redis backup` and `dr --help` should not pay
    from tasks.core.verify import Status, verify_catalog

    with _progress("verify") as progress:
        report = verify_catalog(
            catalog,
            now=utcnow(),
            latest=latest,
            work_dir=work_dir,
            progress=progress,
            require_immutable=require_immutable,
            versioned_buckets=versioned_buckets or (),
        )
    if as_json:
        _emit_json(
            {
                "ok": report.ok,
                "protection": [
                    {"location": p.location, "immutable": p.immutable, "detail": p.detail}
                    for p in report.protections
                ],
                "results": [
                    {
                        "backup_id": r.backup_id,
                        "location": r.location,
                        "status": r.status.value,
                        "detail": r.detail,
                    }
                    for r in report.results
                ],
            }
        )
    elif not report.results:
        err.print(
            "dr: error: no backups to verify in " + ", ".join(loc.url for loc in catalog.locations)
        )
    else:
        table = Table("BACKUP", "LOCATION", "STATUS", "DETAIL", box=None, pad_edge=False)
        for r in report.results:
            style = "green" if r.status is Status.OK else "bold red"
            table.add_row(r.backup_id, r.location, Text(r.status.value, style=style), r.detail)
        out.print(table)
        bad = sum(r.status is not Status.OK for r in report.results)
        out.print(f"{len(report.results) - bad} ok, {bad} failed")
        for p in report.protections:
            out.print(f"protection: {p.detail}" + (" (immutable)" if p.immutable else ""))
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


# ---- dr restore -----------------------------------------------------------------------------


@app.command("restore")
def restore_cmd(
    database_url: DatabaseUrlOpt = None,
    list_: Annotated[bool, typer.Option("--list", help="List backups, newest first.")] = False,
    latest: Annotated[
        bool, typer.Option("--latest", help="Restore the newest good backup.")
    ] = False,
    backup_id: Annotated[
        str | None, typer.Option("--backup-id", help="Restore this backup (id or unique prefix).")
    ] = None,
    backup_file: Annotated[
        Path | None,
        typer.Option(
            "--backup-file", help="Restore the backup this artefact or manifest file belongs to."
        ),
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before", help="Restore the newest good backup taken before this UTC time (ISO 8601)."
        ),
    ] = None,
    source_database: Annotated[
        str | None,
        typer.Option(
            "--source-database",
            help="Which database's backups to choose from (default: the target's name).",
        ),
    ] = None,
    drop_existing: Annotated[
        bool,
        typer.Option(
            "--drop-existing",
            help="Drop the replaced database after the switch instead of keeping it.",
        ),
    ] = False,
    confirm: Annotated[
        bool,
        typer.Option(
            "--confirm", help="Really do it; without it, print the plan and change nothing."
        ),
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", min=1, help="Parallel pg_restore jobs (default: CPU count)."),
    ] = None,
    backup_dir: BackupDirOpt = Path("backups"),
    s3_bucket: S3BucketOpt = None,
    s3_prefix: S3PrefixOpt = "database-backups",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    work_dir: WorkDirOpt = None,
    target_time: Annotated[
        str | None,
        typer.Option("--target-time", help="Point-in-time restore (pgBackRest) to this UTC time."),
    ] = None,
    target_lsn: Annotated[
        str | None, typer.Option("--target-lsn", help="Point-in-time restore to this LSN.")
    ] = None,
    target_xid: Annotated[
        str | None,
        typer.Option("--target-xid", help="Point-in-time restore to this transaction id."),
    ] = None,
    physical: Annotated[
        bool,
        typer.Option("--physical", help="With --latest: the newest state from pgBackRest."),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", envvar="DR_CONFIG", help="dr.toml (physical restores; --list adds them)."
        ),
    ] = None,
) -> None:
    """Restore a backup safely (side copy, verify, switch), or --list the backups."""
    with _errors(debug):
        locations = _locations(backup_dir, s3_bucket, s3_prefix)
        if list_:
            from flows.cli_pitr import physical_listing

            _list(_catalog(locations), source_database, as_json, physical_listing(config))
            return
        from flows.cli_pitr import run_physical_restore, target_from_flags

        if physical and not latest:
            raise ConfigError("--physical goes with --latest (or give a --target-* flag)")
        pitr_target = target_from_flags(target_time, target_lsn, target_xid, physical and latest)
        if pitr_target is not None:
            run_physical_restore(config, pitr_target, confirm=confirm, as_json=as_json)
            return
        chosen = [
            n
            for n, v in (
                ("--latest", latest),
                ("--backup-id", backup_id),
                ("--backup-file", backup_file),
                ("--before", before),
            )
            if v
        ]
        if len(chosen) != 1:
            raise ConfigError(
                "choose exactly one backup: --latest, --backup-id, --backup-file "
                f"or --before (got {', '.join(chosen) or 'none'})"
            )
        if not database_url:
            raise ConfigError("no target: give --database-url or set DATABASE_URL")
        target = parse_database_url(database_url)
        now = utcnow()
        if backup_file is not None:
            root, backup_id = local_entry_from_path(backup_file)
            locations = [LocalStorage(root), *locations[1:]]
        catalog = _catalog(locations)
        entry = _select(
            catalog, target.dbname, target.engine, source_database, backup_id, before, now
        )
        ahead = (entry.manifest.consistent_at - now).total_seconds()
        if ahead > 0 and not backup_id:  # chosen by time, on a clock that disagrees with ours
            err.print(
                f"dr: warning: {entry.backup_id} is dated {units.utc(entry.manifest.consistent_at)}"
                f", {units.age(ahead)} ahead of this machine's clock (clock "
                "skew?): backups are chosen by time; name one with --backup-id if not this"
            )
        from tasks.core.restore import plan_restore, restore

        plan = plan_restore(target, entry, drop_existing=drop_existing, now=now)
        _require_consent(
            confirm, plan.describe(), as_json, backup_id=entry.backup_id, target=str(target)
        )
        with _progress(f"fetch {entry.backup_id}", total=entry.manifest.size) as progress:
            result = restore(
                plan,
                confirm=True,
                jobs=jobs,
                work_dir=work_dir,
                progress=progress,
                encryption=catalog.encryption,
                approved_by=f"--confirm ({actor()})",
                stage=progress.stage if progress else None,
            )
        if as_json:
            _emit_json(
                {
                    "backup_id": entry.backup_id,
                    "target": str(target),
                    "source": result.source,
                    "duration_s": round(result.duration_s, 3),
                    "kept_as": result.kept_as,
                    "roles_created": result.roles_created,
                    "skipped_locations": result.skipped_locations,
                    "loaded_during_fetch": result.loaded_during_fetch,
                    "counts": [
                        {
                            "table": c.table,
                            "expected": c.expected,
                            "actual": c.actual,
                            "counted_by": "copy" if c.by_copy else "count",
                        }
                        for c in result.counts
                    ],
                }
            )
            return
        for url, why in result.skipped_locations.items():
            err.print(f"dr: warning: copy in {url} not used: {why}")
        out.print(
            f"restored {entry.backup_id} into {target} from {result.source} "
            f"in {result.duration_s:.1f}s"
        )
        out.print(
            f"  verified: {len(result.counts)} tables, "
            f"{sum(c.expected for c in result.counts)} rows match the manifest"
        )
        if result.loaded_during_fetch:
            out.print(
                "  loaded while the backup arrived (counted by the server's COPY): "
                + ", ".join(result.loaded_during_fetch)
            )
        if result.roles_created:
            out.print(f"  roles created (no password set): {', '.join(result.roles_created)}")
        if result.kept_as:
            out.print(f"  previous database kept as {result.kept_as}")
        elif plan.target_exists:
            out.print("  previous database dropped (--drop-existing)")


def _select(
    catalog: Catalog,
    target_db: str,
    engine: str,
    source_db: str | None,
    backup_id: str | None,
    before: str | None,
    now: datetime,
) -> BackupEntry:
    if backup_id:
        return catalog.get(backup_id)
    before_t = _parse_time(before, "--before") if before else None
    if before_t is not None and before_t > now:
        raise ConfigError(f"--before {before} is in the future; give a past time or use --latest")
    return catalog.select_for(target_db, engine, source=source_db, before=before_t)


def _list(catalog: Catalog, database: str | None, as_json: bool, physical: Any = None) -> None:
    """``physical``: the pgBackRest window (flows.cli_pitr) whose backups join the listing."""
    from flows.cli_pitr import physical_json, physical_rows

    listing = catalog.list(database)
    now = utcnow()
    for p in listing.problems:
        err.print(f"dr: warning: {p}")
    if as_json:
        _emit_json(
            physical_json(physical)
            + [
                {
                    "backup_id": e.backup_id,
                    "database": e.manifest.database,
                    "engine": e.manifest.engine,
                    "kind": e.manifest.kind,
                    "taken_at": e.manifest.consistent_at.isoformat(),
                    "age_s": round((now - e.manifest.consistent_at).total_seconds()),
                    "size": e.manifest.size,
                    "locations": e.location_names(),
                    "verified": None
                    if e.last_verification is None
                    else {"at": e.last_verification.at.isoformat(), "ok": e.last_verification.ok},
                }
                for e in listing.backups
            ]
        )
        return
    extra = physical_rows(physical, now) if physical is not None else []
    if not listing.backups and not extra:
        out.print("no backups in " + ", ".join(loc.url for loc in catalog.locations))
        return
    rows: list[tuple[str, ...]] = [
        ("ID", "DATABASE", "ENGINE", "TAKEN (UTC)", "AGE", "SIZE", "LOCATIONS", "VERIFIED"),
        *extra,
    ]
    for e in listing.backups:
        v = e.last_verification
        verified = "-" if v is None else ("ok " if v.ok else "FAILED ") + units.utc(v.at)
        rows.append(
            (
                e.backup_id,
                e.manifest.database,
                e.manifest.engine,
                units.utc(e.manifest.consistent_at),
                units.age((now - e.manifest.consistent_at).total_seconds()),
                units.size(e.manifest.size),
                ",".join(e.location_names()),
                verified,
            )
        )
    # plain aligned columns: a rich table of 1,000 rows costs half a second to lay out
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )
    )
    if physical is not None:
        print(physical.describe())


# ---- dr scenario / dr demo --------------------------------------------------------------------

SCENARIOS = {
    "database-corruption": "flows.database_corruption:database_corruption",
    "infrastructure-loss": "flows.infrastructure_loss:infrastructure_loss",
    "data-loss": "flows.data_loss:data_loss",
    "security-breach": "flows.security_breach:security_breach",
}


def _prefect_defaults() -> None:
    """Settings for running flows from the CLI (Prefect reads them at import)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--param {text!r}: expected key=value")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value  # a plain string


def _print_outcome(state_name: str, message: str, summary: dict[str, Any]) -> None:
    from rich.markdown import Markdown

    out.print(Markdown(summary.get("report", "")) if out.is_terminal else summary.get("report"))
    rto, rpo = summary.get("rto_s"), summary.get("rpo_s")
    if rto is not None:
        out.print(f"RTO {rto / 60:.2f} min, RPO {0 if rpo is None else rpo / 60:.2f} min")
    if state_name != "COMPLETED":
        err.print(f"dr: error: {summary.get('scenario', 'scenario')} ended {state_name}: {message}")
        raise typer.Exit(EXIT_FAILED)


@app.command()
def scenario(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SCENARIOS)}.")],
    config: Annotated[
        Path | None, typer.Option("--config", envvar="DR_CONFIG", help="The environment's dr.toml.")
    ] = None,
    confirm: Annotated[
        bool,
        typer.Option(
            "--confirm", help="Approve the destructive steps up front (no pause for approval)."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Resolve and print the plan; change nothing.")
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="Extra flow parameter "
            "key=value (JSON values allowed), e.g. deleted_at=2026-01-15T14:30:00Z",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Run a disaster scenario flow here (Prefect's ephemeral API unless PREFECT_API_URL)."""
    with _errors(debug):
        if name not in SCENARIOS:
            raise ConfigError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}")
        params = dict(_param(p) for p in param or [])
        if config is not None:
            load_config(config)  # fail here, in one line, on a bad file
        if not confirm and not dry_run and not os.environ.get("PREFECT_API_URL"):
            raise ConsentRequired(
                "without --confirm the scenario pauses for approval in the "
                "Prefect UI: set PREFECT_API_URL to a running server (dr up), "
                "or pass --confirm or --dry-run"
            )
        _prefect_defaults()
        import importlib

        module, attr = SCENARIOS[name].split(":")
        flow_fn = getattr(importlib.import_module(module), attr)
        from prefect.exceptions import ParameterBindError, SignatureMismatchError

        try:
            state = flow_fn(
                config=str(config or ""),
                confirm=confirm,
                dry_run=dry_run,
                return_state=True,
                **params,
            )
        except (ParameterBindError, SignatureMismatchError, TypeError) as exc:
            raise ConfigError(f"{name}: bad --param: {str(exc).splitlines()[0]}") from None

        summary = state.result(raise_on_failure=False)
        if isinstance(summary, BaseException):
            raise summary
        _print_outcome(state.type.value, state.message or "", summary)


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option("--dir", help="Where the demo environment lives.")
    ] = Path("dr-demo"),
    sqlite: Annotated[
        bool, typer.Option("--sqlite", help="Use SQLite even when PostgreSQL is installed.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Break a demo environment and recover it with the database-corruption scenario."""
    with _errors(debug):
        _prefect_defaults()
        from flows.demo import run_demo

        summary = run_demo(workdir, use_sqlite=sqlite, say=out.print)
        _print_outcome(summary["state"], summary["outcome"], summary)
        out.print(f"report saved to {workdir / 'report.md'}; demo environment stopped")


# ---- dr up / dr status -----------------------------------------------------------------------


@app.command()
def up(
    config: Annotated[
        Path | None, typer.Option("--config", envvar="DR_CONFIG", help="The environment's dr.toml.")
    ] = None,
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port of the Prefect server/UI.")
    ] = 4200,
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir", help="Where the server keeps its SQLite database and the logs."
        ),
    ] = Path(".dr-state"),
    debug: DebugOpt = False,
) -> None:
    """Run it all here: Prefect server + UI, every deployment, the limits, a worker."""
    with _errors(debug):
        from flows.up import run_up

        run_up(state_dir, port, config, say=out.print)


@app.command()
def status(
    config: Annotated[
        Path | None, typer.Option("--config", envvar="DR_CONFIG", help="The environment's dr.toml.")
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Per database: last backup, last restore test and last drill against the objectives.
    Exit 1 when a database has no backup, its last backup run or restore test failed, or the
    last drill missed an objective."""
    with _errors(debug):
        from tasks.core.status import environment_status

        cfg = load_config(config)
        now = utcnow()
        rows = environment_status(cfg, now)
        rto, rpo = cfg.objectives.rto_minutes, cfg.objectives.rpo_minutes

        def verdict(met: bool | None) -> str:
            return "-" if met is None else ("met" if met else "MISSED")

        data = []
        for st in rows:
            b, run, test, drill = (
                st.last_backup,
                st.last_backup_run,
                st.last_restore_test,
                st.last_drill,
            )
            v = b.last_verification if b else None
            data.append(
                {
                    "database": st.database,
                    "last_backup": b.backup_id if b else None,
                    "backup_age": units.age(st.backup_age_s)
                    if st.backup_age_s is not None
                    else None,
                    "backup_size": units.size(b.manifest.size) if b else None,
                    "verified": None if v is None else ("ok" if v.ok else "FAILED"),
                    "last_backup_run": None if run is None else ("ok" if run.ok else "FAILED"),
                    "last_restore_test": None
                    if test is None
                    else {
                        "at": units.utc(test.started_at),
                        "ok": test.ok,
                        "rto_min": None if test.rto_s is None else round(test.rto_s / 60, 2),
                        "rto": verdict(test.rto_met),
                    },
                    "last_drill": None
                    if drill is None
                    else {
                        "scenario": drill.target,
                        "at": units.utc(drill.started_at),
                        "ok": drill.ok,
                        "rto_min": None if drill.rto_s is None else round(drill.rto_s / 60, 2),
                        "rpo_min": None if drill.rpo_s is None else round(drill.rpo_s / 60, 2),
                        "rto": verdict(drill.rto_met),
                        "rpo": verdict(drill.rpo_met),
                    },
                }
            )
        if as_json:
            _emit_json(
                {
                    "environment": cfg.environment,
                    "objectives": {"rto_min": rto, "rpo_min": rpo},
                    "databases": data,
                }
            )
        else:
            out.print(f"environment {cfg.environment}: objectives RTO {rto:g} min, RPO {rpo:g} min")
            for d in data:
                out.print(f"\n{d['database']}")
                out.print(
                    f"  last backup:       {d['last_backup'] or 'none'}"
                    + (
                        f" ({d['backup_age']} old, {d['backup_size']}, verified: "
                        f"{d['verified'] or 'not yet'})"
                        if d["last_backup"]
                        else ""
                    )
                )
                out.print(f"  last backup run:   {d['last_backup_run'] or 'none recorded'}")
                t = d["last_restore_test"]
                out.print(
                    "  last restore test: "
                    + (
                        "none recorded"
                        if t is None
                        else f"{t['at']} {'ok' if t['ok'] else 'FAILED'}, restore "
                        f"{t['rto_min']} min (RTO {t['rto']})"
                    )
                )
                dr = d["last_drill"]
                out.print(
                    "  last drill:        "
                    + (
                        "none recorded"
                        if dr is None
                        else f"{dr['scenario']} {dr['at']} {'ok' if dr['ok'] else 'FAILED'}, "
                        f"RTO {dr['rto_min']} min ({dr['rto']}), RPO {dr['rpo_min']} min "
                        f"({dr['rpo']})"
                    )
                )
        bad = any(
            d["last_backup"] is None
            or d["last_backup_run"] == "FAILED"
            or (d["last_restore_test"] and not d["last_restore_test"]["ok"])
            or (d["last_drill"] and not d["last_drill"]["ok"])
            for d in data
        )
        if bad:
            raise typer.Exit(EXIT_FAILED)


def main() -> None:
    """``dr``: click's usage errors (an unknown option, a value of the wrong type, a missing
    argument) become one line too, exit code 2, like every other error of ours."""
    # typer vendors click: its exceptions are only reachable here (typer is pinned)
    from typer._click.exceptions import NoArgsIsHelpError, UsageError

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # bare `dr` or `dr redis`: the help, as before
        exc.show()
        raise SystemExit(EXIT_USAGE) from None
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "dr"
        err.print(f"dr: error: {exc.format_message()} (see: {where} --help)")
        raise SystemExit(EXIT_USAGE) from None
    raise SystemExit(code if isinstance(code, int) else 0)


# the other commands register themselves on ``app`` when imported
from flows import (  # noqa: E402
    cli_audit,  # noqa: F401  dr audit
    cli_ops,  # noqa: F401  dr retention, pin, unpin, metrics
    cli_pitr,  # noqa: F401  dr pitr
    cli_redis,  # noqa: F401  dr redis
)
