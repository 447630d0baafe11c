"""Backup verification (``dr backup --verify-only``): a report, one row per backup and location.

Each row checks that the manifest is intact, the artefacts are present with the size and sha256
the manifest records, and that the archive itself reads: ``pg_restore --list`` for PostgreSQL,
``PRAGMA integrity_check`` plus exact row counts for SQLite (on a decompressed temp copy).
Verification never raises for a bad backup: it reports it, and the caller decides what fails.
The result is also recorded next to the backup so that listings show it.
"""

from __future__ import annotations

import contextlib
import enum
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tasks.core.artefacts import fetch_artefact, iter_verified
from tasks.core.catalog import BackupEntry, Catalog, Verification
from tasks.core.engines import sqlite
from tasks.core.engines.postgres import PostgresEngine
from tasks.core.errors import DRError, IntegrityError, UnsupportedFormat
from tasks.core.storage import Storage

__all__ = [
    "CheckResult",
    "Status",
    "VerifyReport",
    "verify_and_record",
    "verify_backup",
    "verify_catalog",
]


class Status(enum.StrEnum):
    OK = "OK"
    MISSING = "MISSING"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    COUNT_MISMATCH = "COUNT_MISMATCH"
    ERROR = "ERROR"


@dataclass(frozen=True)
class CheckResult:
    backup_id: str
    location: str
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.status is Status.OK for r in self.results)


def verify_backup(
    entry: BackupEntry,
    loc: Storage,
    *,
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> CheckResult:
    m = entry.manifest
    art = m.artefacts[0]

    def row(status: Status, detail: str = "") -> CheckResult:
        return CheckResult(m.backup_id, loc.url, status, detail)

    stat = loc.stat(art.key)
    if stat is None:
        return row(Status.MISSING, f"{art.key} is missing")
    if stat.size != art.size:
        return row(
            Status.CHECKSUM_MISMATCH, f"{art.key}: {stat.size} bytes, manifest says {art.size}"
        )
    try:
        if m.engine == "postgresql":
            entries = PostgresEngine.list_archive(iter(iter_verified(loc, art, progress)))
            return row(Status.OK, f"{entries} archive entries, sha256 ok")
        with tempfile.TemporaryDirectory(prefix="dr-verify-", dir=work_dir) as tmp:
            copy = fetch_artefact(loc, art, Path(tmp) / "copy.db", progress)
            sqlite.integrity_check(copy)
            counts = sqlite.count_rows(copy)
        if counts != m.counts:
            diff = sorted(
                t for t in set(counts) | set(m.counts) if counts.get(t) != m.counts.get(t)
            )
            return row(Status.COUNT_MISMATCH, f"row counts differ in {', '.join(diff[:5])}")
        return row(Status.OK, f"integrity_check ok, {len(counts)} tables counted, sha256 ok")
    except IntegrityError as exc:
        return row(_status(exc), str(exc))
    except DRError as exc:
        return row(Status.ERROR, str(exc))


def verify_catalog(
    catalog: Catalog,
    *,
    now: datetime,
    latest: bool = False,
    database: str | None = None,
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify every backup (or the latest per database) in every location that holds it."""
    listing = catalog.list(database)
    entries = listing.backups
    if latest:
        seen: set[str] = set()
        newest = []
        for e in entries:  # newest first
            if e.manifest.database not in seen:
                seen.add(e.manifest.database)
                newest.append(e)
        entries = newest
    results = [
        CheckResult(p.backup_id, p.location, _status(p.error), str(p.error))
        for p in listing.problems
    ]
    for e in entries:
        results += verify_and_record(catalog, e, now=now, work_dir=work_dir, progress=progress)
    return VerifyReport(results)


def verify_and_record(
    catalog: Catalog,
    entry: BackupEntry,
    *,
    now: datetime,
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[CheckResult]:
    """Verify one backup in every location holding it, and record each verdict there."""
    results = []
    for loc in entry.locations:
        r = verify_backup(entry, loc, work_dir=work_dir, progress=progress)
        results.append(r)
        # a read-only location still gets verified; the record is a convenience
        with contextlib.suppress(DRError):
            catalog.record_verification(
                loc, entry.backup_id, Verification(now, r.status is Status.OK, r.detail)
            )
    return results


def _status(exc: IntegrityError) -> Status:
    if isinstance(exc, UnsupportedFormat):
        return Status.ERROR  # written by a newer version: not damage
    return Status.MISSING if str(exc).endswith(": missing") else Status.CHECKSUM_MISMATCH
