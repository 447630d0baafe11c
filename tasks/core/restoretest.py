"""The weekly restore test (runbook "Weekly Full Test"): restore a backup into a scratch target,
run the smoke tests, measure how long it took, and always tear the scratch target down.

Smoke tests: exact row counts against the manifest (the restore itself refuses a mismatch),
referential integrity of every foreign key (no orphan rows: constraints restored as NOT VALID,
or SQLite tables whose keys were never enforced, can hide them), and the configured critical
queries. The restore duration is the measured estimate of the database part of the RTO.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from tasks.core.catalog import BackupEntry
from tasks.core.config import CriticalQuery
from tasks.core.crypto import EncryptionKey
from tasks.core.dbcheck import run_critical_queries
from tasks.core.dburl import DatabaseURL, parse_database_url
from tasks.core.engines.postgres import PostgresEngine, pg_errors
from tasks.core.errors import DRError
from tasks.core.report import Check
from tasks.core.restore import plan_restore, restore

__all__ = ["RestoreTestResult", "evidence_markdown", "foreign_key_checks", "run_restore_test"]

_FOREIGN_KEYS = """
SELECT c.conname,
       format('%I.%I', cn.nspname, cl.relname),
       format('%I.%I', pn.nspname, pl.relname),
       array_agg(quote_ident(a.attname) ORDER BY k.ord),
       array_agg(quote_ident(af.attname) ORDER BY k.ord)
FROM pg_constraint c
JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace
JOIN pg_class pl ON pl.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pl.relnamespace
CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(attnum, fattnum, ord)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
JOIN pg_attribute af ON af.attrelid = c.confrelid AND af.attnum = k.fattnum
WHERE c.contype = 'f' AND c.conparentid = 0
GROUP BY c.oid, c.conname, cn.nspname, cl.relname, pn.nspname, pl.relname
ORDER BY 2, 1
"""


@dataclass(frozen=True)
class RestoreTestResult:
    backup_id: str
    scratch: str  # where it was restored (redacted URL or temp path), now gone
    duration_s: float  # fetch + restore + count verification: the RTO estimate
    checks: list[Check]
    torn_down: bool

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def foreign_key_checks(url: DatabaseURL) -> list[Check]:
    """One check per foreign key: rows whose key matches no parent row (must be 0)."""
    checks: list[Check] = []
    if url.engine == "sqlite":
        assert url.path is not None
        with contextlib.closing(sqlite3.connect(f"file:{url.path}?mode=ro", uri=True)) as conn:
            orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
            fks = conn.execute(
                'SELECT m.name, f."table" FROM sqlite_schema m, '
                "pragma_foreign_key_list(m.name) f WHERE m.type = 'table' "
                "GROUP BY m.name, f.id"
            ).fetchall()
        per_pair: dict[tuple[str, str], int] = {}
        for table, _rowid, parent, _fkid in orphans:
            per_pair[(table, parent)] = per_pair.get((table, parent), 0) + 1
        for table, parent in fks:
            n = per_pair.get((table, parent), 0)
            checks.append(
                Check(f"foreign key {table} -> {parent}", "0 orphans", f"{n} orphans", n == 0)
            )
        return checks
    with (
        PostgresEngine(url).connect(what="check foreign keys") as conn,
        pg_errors("check foreign keys"),
    ):
        for name, child, parent, cols, pcols in conn.execute(_FOREIGN_KEYS).fetchall():
            not_null = sql.SQL(" AND ").join(
                sql.SQL("c.{} IS NOT NULL").format(sql.SQL(c)) for c in cols
            )
            match = sql.SQL(" AND ").join(
                sql.SQL("p.{} = c.{}").format(sql.SQL(p), sql.SQL(c))
                for c, p in zip(cols, pcols, strict=True)
            )
            query = sql.SQL(
                "SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})"
            ).format(sql.SQL(child), not_null, sql.SQL(parent), match)
            row = conn.execute(query).fetchone()
            n = int(row[0]) if row else 0
            checks.append(
                Check(
                    f"foreign key {name} ({child} -> {parent})", "0 orphans", f"{n} orphans", n == 0
                )
            )
    return checks


def run_restore_test(
    entry: BackupEntry,
    source: DatabaseURL,
    queries: Sequence[CriticalQuery] = (),
    *,
    scratch_server: str | None = None,
    work_dir: Path | None = None,
    encryption: EncryptionKey | None = None,
) -> RestoreTestResult:
    """Restore ``entry`` into a throwaway target, smoke-test it, drop it (also on failure).

    PostgreSQL: a new database ``<name>_dr_test_<id>`` on ``scratch_server`` (a URL; default:
    the source's own server). SQLite: a file in a temp dir."""
    short = entry.backup_id.rsplit("-", 1)[-1]
    tmpdir: Path | None = None
    if source.engine == "sqlite":
        tmpdir = Path(tempfile.mkdtemp(prefix="dr-restore-test-", dir=work_dir))
        scratch = parse_database_url(f"sqlite:///{tmpdir / 'scratch.db'}")
    else:
        base = parse_database_url(scratch_server) if scratch_server else source
        scratch = base.with_dbname(f"{source.dbname}_dr_test_{short}"[:63])
    t0 = time.monotonic()
    torn_down = False
    try:
        result = restore(
            plan_restore(scratch, entry, drop_existing=True),
            confirm=True,
            work_dir=work_dir,
            encryption=encryption,
            approved_by="restore test into a scratch target (no approval needed)",
        )
        duration = time.monotonic() - t0
        checks = [Check(c.table, str(c.expected), str(c.actual), c.ok) for c in result.counts]
        checks += foreign_key_checks(scratch)
        checks += run_critical_queries(scratch, queries)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
            torn_down = not tmpdir.exists()
        else:
            with contextlib.suppress(DRError):
                engine = PostgresEngine(scratch)
                engine.drop_database(scratch.dbname)
                torn_down = not engine.database_exists(scratch.dbname)
    return RestoreTestResult(entry.backup_id, str(scratch), duration, checks, torn_down)


def evidence_markdown(
    result: RestoreTestResult, database: str, environment: str, rto_objective_s: float
) -> str:
    """The evidence report a restore test publishes: what was restored, where, how long it
    took against the RTO, and every check."""
    verdict = "PASSED" if result.ok and result.duration_s <= rto_objective_s else "FAILED"
    lines = [
        f"# restore test {verdict}: {database} ({environment})",
        "",
        f"* backup: {result.backup_id}",
        f"* restored into: {result.scratch} (torn down: {'yes' if result.torn_down else 'NO'})",
        f"* restore duration (RTO estimate): {result.duration_s:.1f} s; objective "
        f"{rto_objective_s / 60:g} min: "
        f"{'met' if result.duration_s <= rto_objective_s else 'MISSED'}",
        "",
        "| check | expected | actual | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c.name} | {c.expected} | {c.actual} | {'✅' if c.ok else '❌'} |"
        for c in result.checks
    ]
    return "\n".join(lines) + "\n"
