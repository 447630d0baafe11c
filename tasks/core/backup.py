"""Taking a backup: dump -> compress/hash/fan out -> manifest (the commit point) -> housekeeping.

backup_database()
  1. dump the database, streaming: pg_dump -Fc (or SQLite's backup API) -> zstd -> sha256 ->
     every location at once (no second full copy on disk)
  2. write manifest.json in every location that received all artefacts   <- commit point
  3. sweep leftovers of crashed runs (only those quiet for longer than the grace period)
  4. apply the retention policy, if one was given
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tasks.core import retention
from tasks.core.artefacts import ArtefactWriter
from tasks.core.catalog import DEFAULT_SWEEP_GRACE, Catalog, utcnow
from tasks.core.dburl import DatabaseURL
from tasks.core.errors import DRError, PermanentError
from tasks.core.manifest import MANIFEST, Manifest, new_backup_id
from tasks.core.storage import CHUNK
from tasks.core.version import VERSION

__all__ = ["BackupResult", "backup_database", "commit_manifest", "finish_backup"]

PG_ARTEFACT = "database.pgdump.zst"
SQLITE_ARTEFACT = "database.sqlite.zst"


@dataclass(frozen=True)
class BackupResult:
    manifest: Manifest
    committed: list[str]  # location urls holding the committed backup
    failed: dict[str, str]  # location url -> why it does not hold it
    swept: list[str] = field(default_factory=list)
    retention: list[retention.Decision] = field(default_factory=list)
    duration_s: float = 0.0
    housekeeping_error: str | None = None  # sweep/retention failed after the commit

    @property
    def complete(self) -> bool:
        return not self.failed and self.housekeeping_error is None


def commit_manifest(writer: ArtefactWriter, manifest: Manifest) -> tuple[list[str], dict[str, str]]:
    """Write the manifest (the commit point) in every location that received all artefacts.
    Returns (committed location urls, failed url -> why); raises if none committed."""
    failed = {f.location: str(f.error) for f in writer.failures}
    committed: list[str] = []
    body = manifest.to_bytes()
    for loc in writer.live_locations:
        try:
            loc.put(f"{manifest.backup_id}/{MANIFEST}", body)
            committed.append(loc.url)
        except DRError as exc:
            failed[loc.url] = str(exc)
    if not committed:
        raise PermanentError(
            f"backup {manifest.backup_id} could not be committed anywhere: "
            + "; ".join(f"{k}: {v}" for k, v in failed.items())
        )
    return committed, failed


def backup_database(
    url: DatabaseURL,
    catalog: Catalog,
    *,
    progress: Callable[[int], None] | None = None,
    retention_days: int | None = None,
    labels: dict[str, str] | None = None,
    now: Callable[[], datetime] = utcnow,
    sweep_grace: timedelta = DEFAULT_SWEEP_GRACE,
    work_dir: Path | None = None,
) -> BackupResult:
    """Back up ``url`` to every location of ``catalog``.

    Succeeds if at least one location committed the backup (``failed`` says which did not);
    raises if none did. A crash at any point leaves no manifest, hence no backup."""
    t0 = time.monotonic()
    started = now()
    backup_id = new_backup_id(url.dbname, started)
    if url.engine == "postgresql":
        writer = ArtefactWriter(
            catalog.locations,
            f"{backup_id}/{PG_ARTEFACT}",
            fmt="pg_dump-custom",
            encryption=catalog.encryption,
        )
        try:
            from tasks.core.engines.postgres import PostgresEngine  # psycopg: only when used

            info = PostgresEngine(url).dump(writer.write, progress)
            art = writer.close()
        except BaseException:
            writer.abort()
            raise
        manifest = Manifest(
            backup_id=backup_id,
            engine="postgresql",
            database=url.dbname,
            source=str(url),
            server_version=info.server_version,
            tool_version=VERSION,
            dump_tool=info.dump_tool,
            started_at=started,
            consistent_at=info.consistent_at,
            finished_at=now(),
            artefacts=(art,),
            counts=info.counts,
            large_objects=info.large_objects,
            roles=info.roles,
            database_properties=info.properties,
            labels=labels or {},
        )
    else:
        from tasks.core.engines import sqlite

        assert url.path is not None
        with tempfile.TemporaryDirectory(prefix="dr-sqlite-", dir=work_dir) as tmp:
            copy = Path(tmp) / "copy.db"
            version = sqlite.online_copy(url.path, copy)
            consistent_at = now()
            counts = sqlite.count_rows(copy)
            writer = ArtefactWriter(
                catalog.locations,
                f"{backup_id}/{SQLITE_ARTEFACT}",
                fmt="sqlite",
                encryption=catalog.encryption,
            )
            try:
                with open(copy, "rb") as f:
                    while chunk := f.read(CHUNK):
                        writer.write(chunk)
                        if progress:
                            progress(len(chunk))
                art = writer.close()
            except BaseException:
                writer.abort()
                raise
        manifest = Manifest(
            backup_id=backup_id,
            engine="sqlite",
            database=url.dbname,
            source=str(url),
            server_version=version,
            tool_version=VERSION,
            dump_tool=f"sqlite3 backup API {version}",
            started_at=started,
            consistent_at=consistent_at,
            finished_at=now(),
            artefacts=(art,),
            counts=counts,
            labels=labels or {},
        )

    return finish_backup(
        writer, manifest, catalog, retention_days=retention_days, now=now,
        sweep_grace=sweep_grace, t0=t0,
    )  # fmt: skip


def finish_backup(
    writer: ArtefactWriter,
    manifest: Manifest,
    catalog: Catalog,
    *,
    retention_days: int | None,
    now: Callable[[], datetime],
    sweep_grace: timedelta,
    t0: float,
) -> BackupResult:
    """Commit ``manifest`` where every artefact landed, then the housekeeping: sweep the
    leftovers of crashed runs, and with ``retention_days`` apply the age policy to the earlier
    backups of the same database and engine (a Redis snapshot filed next to PostgreSQL backups
    keeps its own policy). Housekeeping runs only where this backup landed (a location that
    just failed is left alone), and its failure is reported next to the committed backup,
    never instead of it."""
    committed, failed = commit_manifest(writer, manifest)
    healthy = Catalog(
        [loc for loc in catalog.locations if loc.url in committed], catalog.encryption
    )
    swept: list[str] = []
    decisions: list[retention.Decision] = []
    housekeeping_error = None
    try:
        swept = healthy.sweep(now(), sweep_grace)
        if retention_days is not None:
            mine = [
                e
                for e in healthy.list(manifest.database).backups
                if e.manifest.engine == manifest.engine
            ]
            policy = retention.AgePolicy(timedelta(days=retention_days))
            decisions = retention.decide(healthy, mine, policy, now())
            retention.apply(healthy, mine, decisions, now=now())
    except DRError as exc:
        housekeeping_error = str(exc)
    return BackupResult(
        manifest, committed, failed, swept, decisions, time.monotonic() - t0, housekeeping_error
    )
