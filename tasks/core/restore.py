"""Restoring a backup, safely.

plan_restore()  resolve the target and what would change; pure, no side effects
restore()       with consent only:
  1. fetch the artefact: local copy if its checksum holds, else the next location (S3),
     decompressed into the work dir. Meanwhile the missing roles and the empty side database
     are created, and (PostgreSQL) loaded while the bytes arrive (engines/pgstream.py); a
     copy that does not check out empties the side database again (removed if no copy does)
  2. finish the restore into the side database (SQLite: the side file is the fetched copy)
  3. verify exact row counts against the manifest; on mismatch drop the side copy, stop;
     then give the side copy the source database's settings
  4. switch the side copy into place in one step; keep the previous database as
     <name>_pre_restore_<id>, or drop it after the switch with drop_existing
Any failure before step 4 leaves the current database untouched and removes the side copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tasks.core import audit as audit_trail
from tasks.core.artefacts import fetch_artefact, partial_path, require_key
from tasks.core.audit import AuditRecord
from tasks.core.catalog import BackupEntry, utcnow
from tasks.core.crypto import EncryptionKey
from tasks.core.dburl import DatabaseURL, redact
from tasks.core.engines import sqlite
from tasks.core.engines.pgstream import StreamedRestore
from tasks.core.engines.postgres import PostgresEngine
from tasks.core.errors import (
    ConfigError,
    ConsentRequired,
    DRError,
    IntegrityError,
    VerificationFailed,
)
from tasks.core.retention import lease
from tasks.core.units import old, size, utc

__all__ = ["CountCheck", "RestorePlan", "RestoreResult", "plan_restore", "restore"]


@dataclass(frozen=True)
class CountCheck:
    table: str
    expected: int
    actual: int | None  # None: the table is missing
    by_copy: bool = False  # actual is the server's row count for the COPY that loaded it

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True)
class RestorePlan:
    entry: BackupEntry
    target: DatabaseURL
    target_exists: bool
    side: str  # side database name (PostgreSQL) or side file path (SQLite)
    keep_as: str  # where the current database goes at the switch
    drop_existing: bool
    age_s: float

    def describe(self) -> list[str]:
        m = self.entry.manifest
        lines = [
            f"backup:   {m.backup_id} ({m.engine}, database {m.database!r}, taken "
            f"{utc(m.consistent_at)}, {old(self.age_s)}, "
            f"{size(m.size)}, in {', '.join(self.entry.location_names())})",
            f"target:   {self.target}",
            f"restore:  into side copy {self.side}, verify {len(m.counts)} table counts, "
            "then switch it into place",
        ]
        if self.target_exists:
            fate = (
                "dropped after the switch (--drop-existing)"
                if self.drop_existing
                else f"kept as {self.keep_as}"
            )
            lines.append(f"replaces: the current {self.target.dbname} -> {fate}")
        else:
            lines.append(f"creates:  {self.target.dbname} (it does not exist yet)")
        return lines


@dataclass(frozen=True)
class RestoreResult:
    plan: RestorePlan
    source: str  # location url the bytes came from
    counts: list[CountCheck]
    roles_created: list[str]
    kept_as: str | None
    duration_s: float
    skipped_locations: dict[str, str] = field(default_factory=dict)  # url -> why not used
    loaded_during_fetch: list[str] = field(default_factory=list)  # tables (engines/pgstream.py)


def plan_restore(
    target: DatabaseURL, entry: BackupEntry, *, drop_existing: bool, now: datetime | None = None
) -> RestorePlan:
    m = entry.manifest
    if m.engine != target.engine:
        raise ConfigError(
            f"backup {m.backup_id} is a {m.engine} backup; the target is "
            f"{target.engine}: give a {m.engine} --database-url"
        )
    short = m.backup_id.rsplit("-", 1)[-1]
    age = ((now or utcnow()) - m.consistent_at).total_seconds()
    if target.engine == "postgresql":
        eng = PostgresEngine(target)
        kept = _free(eng.kept_name(m.backup_id), eng.database_exists, eng.kept_name, m.backup_id)
        return RestorePlan(
            entry,
            target,
            eng.database_exists(target.dbname),
            eng.side_name(m.backup_id),
            kept,
            drop_existing,
            age,
        )
    assert target.path is not None
    side = target.path.with_name(f".{target.path.name}.restore-{short}")
    path = target.path
    keep = path.with_name(
        _free(
            f"{path.name}.pre_restore_{short}",
            lambda n: path.with_name(n).exists(),
            lambda bid: f"{path.name}.pre_restore_{bid.rsplit('-', 1)[-1]}",
            m.backup_id,
        )
    )
    return RestorePlan(
        entry, target, target.path.exists(), str(side), str(keep), drop_existing, age
    )


def _free(
    first: str, exists: Callable[[str], bool], name_for: Callable[[str], str], backup_id: str
) -> str:
    """``first`` if nothing has that name yet, else the first free ``…_2``, ``…_3``: restoring
    the same backup twice must never replace (or collide with) an earlier kept copy."""
    if not exists(first):
        return first
    for n in range(2, 1000):
        candidate = name_for(f"{backup_id}_{n}")
        if not exists(candidate):
            return candidate
    raise ConfigError(f"too many kept copies named like {first}: drop old ones first")


def _fetch(
    plan: RestorePlan,
    dest: Path,
    progress: Callable[[int], None] | None,
    key: EncryptionKey | None,
    loader: Callable[[], StreamedRestore] | None = None,
    reset: Callable[[], None] | None = None,
) -> tuple[str, dict[str, str]]:
    """Fetch the main artefact from the first location whose copy checks out.

    ``loader`` (a pg_dump archive): a new StreamedRestore per attempt, which loads the side
    database while the bytes arrive and finishes the load once they checked out; after a copy
    that did not, ``reset`` gives the next attempt an empty side database again."""
    m = plan.entry.manifest
    art = m.artefacts[0]
    skipped: dict[str, str] = {}
    for loc in plan.entry.locations:
        load = loader() if loader else None
        try:
            fetch_artefact(loc, art, dest, progress, load.observe if load else None, key)
        except (IntegrityError, FileNotFoundError) as exc:
            skipped[loc.url] = str(exc)
            if load:
                load.abort()
                if load.touched and reset:
                    reset()
            continue
        except BaseException:
            if load:
                load.abort()
            raise
        if load:
            load.finish(dest)
        return loc.url, skipped
    raise IntegrityError(f"no intact copy of backup {m.backup_id}: " + "; ".join(skipped.values()))


def restore(
    plan: RestorePlan,
    *,
    confirm: bool,
    jobs: int | None = None,
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    now: Callable[[], datetime] = utcnow,
    encryption: EncryptionKey | None = None,
    approved_by: str = "confirm=True",
    audit_context: Mapping[str, str] | None = None,
    stage: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Carry out ``plan``; without ``confirm`` raise ConsentRequired and change nothing. While
    it runs, a lease in the backup's locations keeps retention away from the backup.
    ``encryption``: the key of an encrypted backup (a wrong or missing key fails before
    anything changes). The outcome, and who approved it, goes to the audit trail
    (``audit_context``: its ``environment`` and ``flow_run`` fields). ``progress`` gets the
    bytes fetched; ``stage`` a line for each step after the fetch (PostgreSQL: each
    ``pg_restore`` pass, the count, the switch), which can take longer than the fetch."""
    if not confirm:
        raise ConsentRequired("restore not confirmed: add --confirm to do it (nothing changed)")
    target = str(plan.target)

    def audit(action: str, outcome: str, detail: str) -> None:
        ctx = audit_context or {}
        rec = AuditRecord(
            now(), action, target, outcome, approved_by, backup_id=plan.entry.backup_id,
            detail=detail, environment=ctx.get("environment", ""), flow_run=ctx.get("flow_run"),
        )  # fmt: skip
        audit_trail.record(plan.entry.locations, rec)

    try:
        with (
            _restore_lock(plan.target),  # one restore per target: never two switch-overs
            lease(plan.entry.locations, plan.entry.backup_id, now(), f"restore into {plan.side}"),
        ):
            result = _restore(plan, jobs, work_dir, progress, encryption, stage or _quiet)
    except BaseException as exc:
        why = redact(str(exc)) or type(exc).__name__
        audit("restore", f"failed: {why}", f"{target} is unchanged unless the error says so")
        raise
    kept = f"; previous database kept as {result.kept_as}" if result.kept_as else ""
    audit("restore", "ok", f"switched in from {result.source}{kept}")
    if plan.drop_existing and plan.target_exists:
        audit("drop-database", "ok", f"dropped the previous database ({plan.keep_as})")
    return result


def _quiet(_: str) -> None:
    pass


def _restore(
    plan: RestorePlan,
    jobs: int | None,
    work_dir: Path | None,
    progress: Callable[[int], None] | None,
    key: EncryptionKey | None,
    stage: Callable[[str], None],
) -> RestoreResult:
    t0 = time.monotonic()
    m = plan.entry.manifest
    if plan.target.engine == "sqlite":
        return _restore_sqlite(plan, progress, t0, key)
    eng = PostgresEngine(plan.target)
    require_key(m.artefacts[0], key)  # a wrong or missing key: refused before anything changes
    tmp = Path(tempfile.mkdtemp(prefix="dr-restore-", dir=work_dir))
    try:
        # the roles and the empty side database are made on the server while the artefact is
        # fetched and checked here; if the fetch fails they are removed again
        archive, n = tmp / "archive.pgdump", jobs or os.cpu_count() or 1
        with ThreadPoolExecutor(1, thread_name_prefix="dr-prepare") as pool:
            prepared = pool.submit(_prepare_side, eng, plan)

            loads: list[StreamedRestore] = []  # one per location tried

            def loader() -> StreamedRestore:
                partial = partial_path(archive)
                loads.append(
                    StreamedRestore(eng, plan.side, partial, n, prepared.result, stage=stage)
                )
                return loads[-1]

            def reset() -> None:  # a copy that failed its checksum was partly loaded
                prepared.result()
                eng.drop_database(plan.side)
                eng.create_side(plan.side, m.database_properties)

            try:
                # the side database is loaded while the archive arrives (pgstream.py); nothing
                # is switched before its checksum held and the counts matched
                source, skipped = _fetch(plan, archive, progress, key, loader, reset)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    _discard_side(eng, plan.side, prepared.result(), exc)
                raise
            roles = prepared.result()
        try:
            # the tables loaded during the fetch come with the server's count of their COPY
            stage(f"verifying the row counts of {plan.side} against the manifest")
            counted = eng.verify_side(plan.side, m, loads[-1].copied)
            checks = [CountCheck(t, e, a, c) for t, (e, a, c) in counted.items()]
            _require_counts(checks, plan.side)
            eng.apply_settings(plan.side, m.database_properties)
            stage(f"switching {plan.side} into place as {plan.target.dbname}")
            eng.switch(plan.side, plan.keep_as if plan.target_exists else None)
        except BaseException as exc:
            _discard_side(eng, plan.side, roles, exc)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kept: str | None = plan.keep_as if plan.target_exists else None
    if kept and plan.drop_existing:
        eng.drop_database(kept)
        kept = None
    took = time.monotonic() - t0
    return RestoreResult(plan, source, checks, roles, kept, took, skipped, loads[-1].streamed)


def _prepare_side(eng: PostgresEngine, plan: RestorePlan) -> list[str]:
    """The roles the backup needs that the cluster lacks, then the empty side database;
    returns the roles created (removed again if the side database cannot be made)."""
    m = plan.entry.manifest
    roles = eng.ensure_roles(m.roles)
    try:
        eng.create_side(plan.side, m.database_properties)
    except BaseException as exc:
        _discard_side(eng, plan.side, roles, exc)
        raise
    return roles


def _restore_lock(target: DatabaseURL) -> contextlib.AbstractContextManager[None]:
    if target.engine == "postgresql":
        return PostgresEngine(target).restore_lock()
    assert target.path is not None
    return sqlite.restore_lock(target.path)


def _discard_side(eng: PostgresEngine, side: str, roles: list[str], cause: BaseException) -> None:
    """After a failure before the switch: drop the side copy and the roles created for it (the
    cluster is left as it was found). If that fails too (the server is gone), the first error
    stays the one raised, and says what was left behind."""
    try:
        eng.drop_database(side)
        eng.drop_roles(roles)
    except DRError as exc:
        if isinstance(cause, DRError) and cause.args:
            cause.args = (
                f"{cause.args[0]}; the side copy {side} could not be removed ({exc}): drop it "
                "once the server is back",
                *cause.args[1:],
            )


def _restore_sqlite(
    plan: RestorePlan, progress: Callable[[int], None] | None, t0: float, key: EncryptionKey | None
) -> RestoreResult:
    m = plan.entry.manifest
    side = Path(plan.side)
    assert plan.target.path is not None
    plan.target.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        source, skipped = _fetch(plan, side, progress, key)
        sqlite.integrity_check(side)
        actual = sqlite.count_rows(side)
        checks = [CountCheck(t, n, actual.get(t)) for t, n in m.counts.items()]
        checks += [CountCheck(t, 0, actual[t]) for t in sorted(set(actual) - set(m.counts))]
        _require_counts(checks, str(side))
        keep = Path(plan.keep_as)
        sqlite.swap_in(side, plan.target.path, keep)
    finally:
        sqlite.remove_with_side_files(side)
    kept: str | None = plan.keep_as if plan.target_exists else None
    if kept and plan.drop_existing:
        sqlite.remove_with_side_files(keep)
        kept = None
    return RestoreResult(plan, source, checks, [], kept, time.monotonic() - t0, skipped)


def _require_counts(checks: list[CountCheck], where: str) -> None:
    bad = [c for c in checks if not c.ok]
    if bad:
        first = ", ".join(
            f"{c.table}: expected {c.expected}, got {'missing' if c.actual is None else c.actual}"
            for c in bad[:3]
        )
        raise VerificationFailed(
            f"restored copy {where} does not match the manifest "
            f"({len(bad)} table(s): {first}); current database untouched"
        )
