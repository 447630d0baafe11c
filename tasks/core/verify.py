"""Backup verification (``dr backup --verify-only``): a report, one row per backup and location.

Each row checks that the manifest is intact, the artefacts are present with the size and sha256
the manifest records, and that the archive itself reads: ``pg_restore --list`` for PostgreSQL,
``PRAGMA integrity_check`` plus exact row counts for SQLite (on a decompressed temp copy), the
RDB structure, CRC64 and keys per db for Redis (streamed, tasks/core/rdb.py).
Verification never raises for a bad backup: it reports it, and the caller decides what fails.
The result is also recorded next to the backup so that listings show it.
"""

from __future__ import annotations

import contextlib
import enum
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tasks.core.artefacts import check_stored, fetch_artefact, iter_verified
from tasks.core.catalog import BackupEntry, Catalog, Verification
from tasks.core.crypto import EncryptionKey
from tasks.core.engines import sqlite
from tasks.core.engines.postgres import PostgresEngine
from tasks.core.errors import DRError, IntegrityError, UnsupportedFormat
from tasks.core.storage import Storage

__all__ = [
    "CheckResult",
    "Protection",
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
    NOT_IMMUTABLE = "NOT_IMMUTABLE"  # --require-immutable: no copy the bucket protects
    ERROR = "ERROR"


@dataclass(frozen=True)
class CheckResult:
    backup_id: str
    location: str
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class Protection:
    """What protects a location's objects from deletion (S3 versioning / Object Lock)."""

    location: str
    immutable: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    results: list[CheckResult]
    protections: list[Protection] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.status is Status.OK for r in self.results)


def verify_backup(
    entry: BackupEntry,
    loc: Storage,
    *,
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    key: EncryptionKey | None = None,
) -> CheckResult:
    """Check one backup in one location. An encrypted backup without its ``key`` gets its
    stored bytes checked (size, sha256) and is reported OK with "contents not checked"."""
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
        if art.encryption is not None and key is None:
            check_stored(loc, art, progress)
            return row(
                Status.OK,
                f"sha256 ok; contents not checked: encrypted (key id {art.encryption.key_id}) "
                "and no key given",
            )
        if m.engine == "redis":
            from tasks.core.redis_backup import verify_rdb  # redis-py only when needed

            ok, detail = verify_rdb(m, iter(iter_verified(loc, art, progress, key)))
            return row(Status.OK if ok else Status.COUNT_MISMATCH, detail)
        if m.engine == "postgresql":
            entries = PostgresEngine.list_archive(iter(iter_verified(loc, art, progress, key)))
            return row(Status.OK, f"{entries} archive entries, sha256 ok")
        with tempfile.TemporaryDirectory(prefix="dr-verify-", dir=work_dir) as tmp:
            copy = fetch_artefact(loc, art, Path(tmp) / "copy.db", progress, key=key)
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
    require_immutable: bool = False,
    versioned_buckets: Sequence[str] = (),
) -> VerifyReport:
    """Verify every backup (or the latest per database) in every location that holds it, and
    report what protects each location (and each of ``versioned_buckets``, e.g. the models
    bucket, which must have versioning). With ``require_immutable``, a backup with no copy in an
    immutable location (S3 Object Lock with a default retention) is not called safe."""
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
    protections = [location_protection(loc) for loc in catalog.locations]
    immutable = {p.location for p in protections if p.immutable}
    if require_immutable:
        results += [
            CheckResult(
                e.backup_id,
                ", ".join(loc.url for loc in e.locations),
                Status.NOT_IMMUTABLE,
                "no copy in an immutable location (S3 Object Lock with a default retention)",
            )
            for e in entries
            if not any(loc.url in immutable for loc in e.locations)
        ]
    for name in versioned_buckets:
        p = _bucket_versioning(name)
        protections.append(p)
        if not p.immutable:
            results.append(CheckResult("-", p.location, Status.NOT_IMMUTABLE, p.detail))
    return VerifyReport(results, protections)


def location_protection(loc: Storage) -> Protection:
    """Immutability of a backup location: only an S3 bucket with Object Lock qualifies."""
    describe = getattr(loc, "protection", None)
    if describe is None:
        return Protection(loc.url, False, f"{loc.name}: anyone with write access can delete")
    try:
        p = describe()
    except DRError as exc:
        return Protection(loc.url, False, f"protection unknown: {exc}")
    return Protection(loc.url, p.immutable, p.describe())


def _bucket_versioning(name: str) -> Protection:
    """A bucket that must keep old versions (the runbook's models bucket): versioning on."""
    from tasks.core.storage.s3 import S3Storage  # boto3 only when asked for

    try:
        p = S3Storage(name, "").protection()
    except DRError as exc:
        return Protection(f"s3://{name}", False, f"versioning unknown: {exc}")
    ok = p.versioning == "Enabled"
    return Protection(
        f"s3://{name}", ok, p.describe() + ("" if ok else ": versioning must be enabled")
    )


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
        r = verify_backup(entry, loc, work_dir=work_dir, progress=progress, key=catalog.encryption)
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
