"""The catalog: which backups exist, where, and whether they were last verified good.

Built from the locations themselves (no separate index to drift out of date): a backup exists in a
location when its ``manifest.json`` is there and checks out. Folders without a manifest are
leftovers of a run that crashed or is still running; ``sweep`` removes them only once they have
been quiet for longer than the grace period.
"""

from __future__ import annotations

import builtins
import contextlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tasks.core.crypto import EncryptionKey
from tasks.core.errors import BackupNotFound, ConfigError, DRError, IntegrityError
from tasks.core.manifest import ID_PATTERN, MANIFEST, Manifest
from tasks.core.storage import ObjectInfo, Storage
from tasks.core.units import utc

__all__ = ["VERIFICATION", "BackupEntry", "Catalog", "Listing", "Problem", "Verification"]

VERIFICATION = "verification.json"
DEFAULT_SWEEP_GRACE = timedelta(hours=6)


@dataclass(frozen=True)
class Verification:
    """The last verification of a backup in one location."""

    at: datetime
    ok: bool
    detail: str = ""

    def to_bytes(self) -> bytes:
        return (
            json.dumps(
                {"at": self.at.isoformat(), "ok": self.ok, "detail": self.detail}, indent=2
            ).encode()
            + b"\n"
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Verification | None:
        try:
            d = json.loads(raw)
            return cls(datetime.fromisoformat(d["at"]), bool(d["ok"]), str(d.get("detail", "")))
        except (ValueError, KeyError, TypeError):
            return None  # an unreadable record means "not verified", never "verified good"


@dataclass(frozen=True)
class BackupEntry:
    """One backup and the locations that hold a valid copy of it (in configured order)."""

    manifest: Manifest
    locations: tuple[Storage, ...]
    verifications: dict[str, Verification] = field(default_factory=dict)  # location url -> last

    @property
    def backup_id(self) -> str:
        return self.manifest.backup_id

    @property
    def last_verification(self) -> Verification | None:
        # on a tie (one verify run stamps every location alike) a failure wins
        return max(self.verifications.values(), key=lambda v: (v.at, not v.ok), default=None)

    @property
    def good(self) -> bool:
        """Not known to be bad: its latest verification, if any, passed."""
        last = self.last_verification
        return last is None or last.ok

    def location_names(self) -> list[str]:
        return [loc.name for loc in self.locations]


@dataclass(frozen=True)
class Problem:
    """A manifest that exists in a location but does not check out there."""

    location: str
    backup_id: str
    error: IntegrityError

    def __str__(self) -> str:
        return str(self.error)


@dataclass(frozen=True)
class Listing:
    backups: list[BackupEntry]  # newest first
    problems: list[Problem]


class Catalog:
    """Backups across ``locations``; the first location is preferred for reads."""

    def __init__(
        self, locations: Sequence[Storage], encryption: EncryptionKey | None = None
    ) -> None:
        """``encryption``: the key new backups are encrypted with, and encrypted backups are
        read with (tasks/core/crypto.py); None writes unencrypted backups."""
        if not locations:
            raise ConfigError("no backup location: give --backup-dir and/or --s3-bucket")
        self.locations = tuple(locations)
        self.encryption = encryption

    def _scan(self, loc: Storage) -> dict[str, list[ObjectInfo]]:
        by_id: dict[str, list[ObjectInfo]] = defaultdict(list)
        for obj in loc.list():
            backup_id, sep, _ = obj.key.partition("/")
            if sep and ID_PATTERN.match(backup_id):
                by_id[backup_id].append(obj)
        return by_id

    def list(self, database: str | None = None) -> Listing:
        """Every committed backup, newest first; ``database`` filters by database name."""
        manifests: dict[str, Manifest] = {}
        holders: dict[str, list[Storage]] = defaultdict(list)
        verifs: dict[str, dict[str, Verification]] = defaultdict(dict)
        problems: builtins.list[Problem] = []
        for loc in self.locations:
            scanned = self._scan(loc)
            todo = [
                (bid, {o.key.rsplit("/", 1)[-1] for o in objs}) for bid, objs in scanned.items()
            ]
            todo = [(bid, names) for bid, names in todo if MANIFEST in names]

            def load(item: tuple[str, set[str]], loc: Storage = loc) -> tuple[str, Any, Any]:
                bid, names = item
                try:
                    m: Manifest | IntegrityError = Manifest.from_bytes(
                        loc.read(f"{bid}/{MANIFEST}"), where=f"{loc.url}/{bid}/{MANIFEST}"
                    )
                except IntegrityError as exc:
                    m = exc
                except FileNotFoundError:
                    m = IntegrityError(f"{loc.url}/{bid}: manifest vanished while listing")
                v = None
                if VERIFICATION in names:
                    try:
                        v = Verification.from_bytes(loc.read(f"{bid}/{VERIFICATION}"))
                    except FileNotFoundError:
                        v = None
                return bid, m, v

            # S3: 16 threads hide per-request latency. Local reads are fast: there a pool only
            # adds thread hand-offs (0.26 -> 0.18 s for 1,000 manifests, docs/benchmarks.md).
            with ThreadPoolExecutor(max_workers=16) as pool:
                loaded = map(load, todo) if loc.name == "local" else pool.map(load, todo)
                for bid, m, v in loaded:
                    if isinstance(m, IntegrityError):
                        problems.append(Problem(loc.url, bid, m))
                        continue
                    if m.backup_id != bid:
                        problems.append(
                            Problem(
                                loc.url,
                                bid,
                                IntegrityError(f"{loc.url}/{bid}: manifest names {m.backup_id}"),
                            )
                        )
                        continue
                    manifests.setdefault(bid, m)
                    holders[bid].append(loc)
                    if v is not None:
                        verifs[bid][loc.url] = v
        entries = [
            BackupEntry(m, tuple(holders[bid]), verifs.get(bid, {}))
            for bid, m in manifests.items()
            if database is None or m.database == database
        ]
        entries.sort(key=lambda e: (e.manifest.consistent_at, e.backup_id), reverse=True)
        return Listing(entries, problems)

    def get(self, backup_id: str) -> BackupEntry:
        """The backup with this id, or the one whose id starts with it (if unique)."""
        backups = self.list().backups
        exact = [e for e in backups if e.backup_id == backup_id]
        found = exact or [e for e in backups if e.backup_id.startswith(backup_id)]
        if len(found) > 1:
            raise ConfigError(
                f"backup id {backup_id!r} is ambiguous: matches "
                f"{', '.join(e.backup_id for e in found[:5])}"
            )
        if not found:
            raise BackupNotFound(
                f"no backup with id {backup_id!r} in "
                f"{', '.join(loc.url for loc in self.locations)} "
                "(see: dr restore --list)"
            )
        return found[0]

    def select(
        self,
        *,
        database: str | None,
        backup_id: str | None = None,
        before: datetime | None = None,
        engine: str | None = None,
    ) -> BackupEntry:
        """The backup to restore: by id; else the newest good one of ``database`` (taken before
        ``before`` if given), among backups of ``engine`` if given. With ``database`` None the
        catalog must hold a single database (of that engine)."""
        if backup_id:
            return self.get(backup_id)
        backups = [
            e
            for e in self.list().backups
            if e.good and (engine is None or e.manifest.engine == engine)
        ]
        names = sorted({e.manifest.database for e in backups})
        if database is None:
            if len(names) > 1:
                raise ConfigError(
                    f"backups of several databases ({', '.join(names)}): name one "
                    "with --source-database"
                )
        else:
            backups = [e for e in backups if e.manifest.database == database]
        where = ", ".join(loc.url for loc in self.locations)
        if not backups:
            what = f"of database {database!r} " if database else ""
            raise BackupNotFound(f"no good backup {what}in {where} (see: dr restore --list)")
        if before is not None:
            older = [e for e in backups if e.manifest.consistent_at < before]
            if not older:
                oldest = backups[-1].manifest.consistent_at
                raise BackupNotFound(
                    f"no good backup taken before {utc(before)}; the oldest is from {utc(oldest)}"
                )
            return older[0]
        return backups[0]

    def select_for(
        self,
        target: str,
        engine: str,
        *,
        source: str | None = None,
        before: datetime | None = None,
    ) -> BackupEntry:
        """The backup to restore into the ``engine`` database named ``target``: the newest good
        backup of ``source`` if given, else of ``target``'s own name, else of the only database
        of that engine in the catalog (restoring ``app`` into ``app_copy``). Backups of other
        engines (Redis next to PostgreSQL) are never candidates."""
        if source is None:
            names = {
                e.manifest.database for e in self.list().backups if e.manifest.engine == engine
            }
            if len(names) > 1 and target not in names:
                raise BackupNotFound(
                    f"no {engine} backup of database {target!r}; there are backups of "
                    f"{', '.join(sorted(names))}: name one with --source-database"
                )
            source = target if target in names or len(names) != 1 else None
        return self.select(database=source, before=before, engine=engine)

    def record_verification(self, loc: Storage, backup_id: str, result: Verification) -> None:
        loc.put(f"{backup_id}/{VERIFICATION}", result.to_bytes())

    def delete(self, entry: BackupEntry, locations: Iterable[Storage] | None = None) -> None:
        """Delete the backup: in each location the manifest first, so that a crash half-way
        leaves an uncommitted folder (swept later), never a manifest pointing at nothing."""
        for loc in locations or entry.locations:
            loc.delete(f"{entry.backup_id}/{MANIFEST}")
            for obj in loc.list(f"{entry.backup_id}/"):
                loc.delete(obj.key)

    def sweep(self, now: datetime, grace: timedelta = DEFAULT_SWEEP_GRACE) -> builtins.list[str]:
        """Remove uncommitted backup folders untouched for ``grace``; returns what was removed.

        A folder still being written is newer than ``grace`` (local files change as they grow;
        unfinished S3 multipart uploads are not objects yet and are aborted after ``grace``)."""
        removed: builtins.list[str] = []
        for loc in self.locations:
            for bid, objs in self._scan(loc).items():
                if any(o.key == f"{bid}/{MANIFEST}" for o in objs):
                    continue
                if max(o.modified for o in objs) > now - grace:
                    continue
                for o in objs:
                    loc.delete(o.key)
                removed.append(f"{loc.url}/{bid}")
            abort = getattr(loc, "abort_stale_uploads", None)
            if abort is not None:
                with contextlib.suppress(DRError):  # housekeeping never fails a backup
                    abort(now - grace)
        return removed


def local_entry_from_path(path: Path) -> tuple[Path, str]:
    """``--backup-file``: an artefact or manifest path -> (location root, backup id)."""
    path = path.expanduser().resolve()
    folder = path if path.is_dir() else path.parent
    if not ID_PATTERN.match(folder.name):
        raise ConfigError(
            f"{path} is not inside a backup folder (<database>-<time>-<id>/): "
            "give a file from a dr backup"
        )
    if not (folder / MANIFEST).exists():
        raise ConfigError(f"{folder} has no {MANIFEST}: the backup was not completed")
    return folder.parent, folder.name


def utcnow() -> datetime:
    return datetime.now(UTC)
