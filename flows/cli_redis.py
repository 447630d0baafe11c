"""``dr redis backup|verify|restore``: Redis snapshots in the same catalog as the database backups.

Same conventions as the rest of ``dr`` (flows/cli.py): one-line errors, exit codes 0/1/2/130,
``--json`` for scripts, ``--confirm`` before anything changes, no password ever printed.
Settings come from flags, else from ``[redis]`` in the config (``--config`` / ``DR_CONFIG``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from flows.cli import (
    EXIT_FAILED,
    BackupDirOpt,
    DebugOpt,
    JsonOpt,
    S3BucketOpt,
    S3PrefixOpt,
    WorkDirOpt,
    _catalog,
    _emit_json,
    _errors,
    _locations,
    _progress,
    _require_consent,
    app,
    err,
    out,
)
from tasks.core import units
from tasks.core.catalog import BackupEntry, Catalog, utcnow
from tasks.core.config import Config, RedisConfig, load_config
from tasks.core.dburl import redact
from tasks.core.errors import BackupNotFound, ConfigError

redis_app = typer.Typer(
    name="redis",
    help="Redis snapshots: backup (replication protocol), verify (RDB + CRC64), restore.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(redis_app, name="redis")

# flows/entry.py reads --redis-url and $REDIS_URL the same way, to start the snapshot early
RedisUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="REDIS_URL",
        show_envvar=True,
        help="redis://[user[:password]@]host:port/db or rediss://... (default: [redis] url)",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar="DR_CONFIG", help="The environment's dr.toml ([redis])."),
]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name", help="Name the backups are listed under (default: [redis] name, redis)."
    ),
]


def _settings(
    config: Path | None, redis_url: str | None, name: str | None
) -> tuple[Config, RedisConfig, str]:
    """The config (or the defaults), its [redis] with ``--name`` applied, and the URL to use:
    ``--redis-url`` / $REDIS_URL first (it may carry the password), else the config's."""
    cfg = load_config(config) if config is not None else Config()
    rc = cfg.redis or RedisConfig()
    if name:
        rc = rc.model_copy(update={"name": name})
    return cfg, rc, redis_url or rc.resolve_url()


def _redis_backups(catalog: Catalog, name: str | None) -> list[BackupEntry]:
    return [e for e in catalog.list(name).backups if e.manifest.engine == "redis"]


@redis_app.command("backup")
def backup(
    redis_url: RedisUrlOpt = None,
    name: NameOpt = None,
    backup_dir: BackupDirOpt = Path("backups"),
    s3_bucket: S3BucketOpt = None,
    s3_prefix: S3PrefixOpt = "database-backups",
    retention_days: Annotated[
        int | None,
        typer.Option(
            "--retention-days",
            min=1,
            help="Delete Redis backups older than N days (never the newest good one). "
            "Default: [redis] retention_days, 7.",
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Snapshot Redis over the replication protocol (like redis-cli --rdb) into the catalog."""
    with _errors(debug):
        from tasks.core.redis_backup import backup_redis, parse_redis_url

        _, rc, raw_url = _settings(config, redis_url, name)
        url = parse_redis_url(raw_url)
        catalog = _catalog(_locations(backup_dir, s3_bucket, s3_prefix))
        with _progress(f"snapshot {url}") as progress:
            result = backup_redis(
                url,
                catalog,
                name=rc.name,
                progress=progress,
                retention_days=retention_days or rc.retention_days,
            )
        m = result.manifest
        assert m.redis is not None
        deleted = [d for d in result.retention if not d.keep]
        if as_json:
            _emit_json(
                {
                    "backup_id": m.backup_id,
                    "name": m.database,
                    "engine": m.engine,
                    "server_version": m.server_version,
                    "role": m.redis.role,
                    "appendonly": m.redis.appendonly,
                    "rdb_version": m.redis.rdb_version,
                    "keys": m.counts,
                    "expiring": m.redis.expiring,
                    "counts_exact": m.redis.counts_exact,
                    "used_memory": m.redis.used_memory,
                    "size": m.size,
                    "raw_size": m.artefacts[0].raw_size,
                    "sha256": m.artefacts[0].sha256,
                    "consistent_at": m.consistent_at.isoformat(),
                    "duration_s": round(result.duration_s, 3),
                    "locations": result.committed,
                    "failed": result.failed,
                    "retention_deleted": [d.backup_id for d in deleted],
                    "housekeeping_error": result.housekeeping_error,
                }
            )
        else:
            out.print(
                f"backup {m.backup_id}: redis {m.server_version} ({m.redis.role}) at {m.source}, "
                f"{sum(m.counts.values())} keys in {len(m.counts)} db(s), RDB "
                f"{units.size(m.artefacts[0].raw_size)} -> {units.size(m.size)} "
                f"in {result.duration_s:.1f}s"
            )
            if not m.redis.counts_exact:
                out.print("  note: keys changed during the snapshot; counts are from after it")
            for loc in result.committed:
                out.print(f"  stored in {loc}")
            for d in deleted:
                out.print(f"  retention: deleted {d.backup_id} ({d.reason})")
        for loc, why in result.failed.items():
            err.print(f"dr: error: backup not stored in {loc}: {redact(why)}")
        if result.housekeeping_error:
            err.print(
                "dr: error: backup stored, but housekeeping (sweep/retention) failed: "
                f"{redact(result.housekeeping_error)}"
            )
        if not result.complete:
            raise typer.Exit(EXIT_FAILED)


@redis_app.command("verify")
def verify(
    backup_id: Annotated[
        str | None, typer.Option("--backup-id", help="Only this backup (id or unique prefix).")
    ] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Only the newest backup.")] = False,
    name: NameOpt = None,
    backup_dir: BackupDirOpt = Path("backups"),
    s3_bucket: S3BucketOpt = None,
    s3_prefix: S3PrefixOpt = "database-backups",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check Redis backups: sha256, RDB header, structure and CRC64, keys per db. Exit 1 if any
    check fails."""
    with _errors(debug):
        from tasks.core.verify import Status, verify_and_record

        catalog = _catalog(_locations(backup_dir, s3_bucket, s3_prefix))
        entries = [catalog.get(backup_id)] if backup_id else _redis_backups(catalog, name)
        if latest:
            entries = entries[:1]
        if not entries:
            raise BackupNotFound(
                "no Redis backups in " + ", ".join(loc.url for loc in catalog.locations)
            )
        now = utcnow()
        results = [r for e in entries for r in verify_and_record(catalog, e, now=now)]
        ok = all(r.status is Status.OK for r in results)
        if as_json:
            _emit_json(
                {
                    "ok": ok,
                    "results": [
                        {
                            "backup_id": r.backup_id,
                            "location": r.location,
                            "status": r.status.value,
                            "detail": r.detail,
                        }
                        for r in results
                    ],
                }
            )
        else:
            for r in results:
                out.print(f"{r.backup_id}  {r.location}  {r.status.value}  {r.detail}")
            bad = sum(r.status is not Status.OK for r in results)
            out.print(f"{len(results) - bad} ok, {bad} failed")
        if not ok:
            raise typer.Exit(EXIT_FAILED)


@redis_app.command("restore")
def restore(
    redis_url: RedisUrlOpt = None,
    latest: Annotated[
        bool, typer.Option("--latest", help="Restore the newest good Redis backup.")
    ] = False,
    backup_id: Annotated[
        str | None, typer.Option("--backup-id", help="Restore this backup (id or unique prefix).")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="server: replace the data of the server [redis] control gives access to "
            "(stop, place the RDB, start, AOF rewrite); keys: RESTORE every key through the URL.",
        ),
    ] = "server",
    confirm: Annotated[
        bool,
        typer.Option(
            "--confirm", help="Really do it; without it, print the plan and change nothing."
        ),
    ] = False,
    name: NameOpt = None,
    config: ConfigOpt = None,
    backup_dir: BackupDirOpt = Path("backups"),
    s3_bucket: S3BucketOpt = None,
    s3_prefix: S3PrefixOpt = "database-backups",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
    work_dir: WorkDirOpt = None,
) -> None:
    """Restore a Redis backup, verified before anything changes; --confirm to carry it out."""
    with _errors(debug):
        from tasks.core.redis_backup import (
            parse_redis_url,
            plan_redis_restore,
            restore_redis,
            server_control,
        )

        if latest == bool(backup_id):
            raise ConfigError("choose exactly one backup: --latest or --backup-id")
        if mode not in ("server", "keys"):
            raise ConfigError(f"--mode {mode!r}: choose server or keys")
        chosen: Literal["server", "keys"] = "server" if mode == "server" else "keys"
        cfg, rc, raw_url = _settings(config, redis_url, name)
        url = parse_redis_url(raw_url)
        catalog = _catalog(_locations(backup_dir, s3_bucket, s3_prefix))
        if backup_id:
            entry = catalog.get(backup_id)
        else:
            good = [e for e in _redis_backups(catalog, rc.name) if e.good]
            if not good:
                raise BackupNotFound(
                    f"no good Redis backup named {rc.name!r} in "
                    + ", ".join(loc.url for loc in catalog.locations)
                )
            entry = good[0]
        now = utcnow()
        plan = plan_redis_restore(
            url, entry, mode=chosen, control=rc.control, writers=rc.writers, now=now
        )
        _require_consent(
            confirm, plan.describe(), as_json, backup_id=entry.backup_id, target=str(url)
        )
        platform = None
        if rc.writers:
            from tasks.core.environment import build_platform

            platform = build_platform(cfg)
        with (
            _progress(f"restore {entry.backup_id}") as progress,
            server_control(cfg, url) as server,
        ):
            result = restore_redis(
                plan,
                confirm=True,
                server=server,
                platform=platform,
                ready_timeout_s=rc.ready_timeout_s,
                work_dir=work_dir,
                progress=progress,
                encryption=catalog.encryption,
            )
        if as_json:
            _emit_json(
                {
                    "backup_id": entry.backup_id,
                    "target": str(url),
                    "mode": chosen,
                    "source": result.source,
                    "duration_s": round(result.duration_s, 3),
                    "kept": result.kept,
                    "aof_rewritten": result.aof_rewritten,
                    "skipped_locations": result.skipped_locations,
                    "counts": [{"db": d, "expected": e, "actual": a} for d, e, a in result.counts],
                }
            )
            return
        for where, why in result.skipped_locations.items():
            err.print(f"dr: warning: copy in {where} not used: {why}")
        out.print(
            f"restored {entry.backup_id} into {url} ({chosen} mode) from {result.source} "
            f"in {result.duration_s:.1f}s"
        )
        out.print(
            "  keys per db: "
            + (", ".join(f"{d}={a} (expected {e})" for d, e, a in result.counts) or "none")
        )
        if result.aof_rewritten:
            out.print("  AOF turned back on and rewritten from the restored data")
        for path in result.kept:
            out.print(f"  previous data kept as {path}")
