"""Is the database healthy? Connectivity, ``SELECT 1``, ``pg_amcheck`` where available, and the
configured critical queries (the runbook's ``SELECT COUNT(*) FROM users``...). Returns findings;
never raises for a sick database (that is what the scenario came to find out)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tasks.core.config import CriticalQuery
from tasks.core.dburl import DatabaseURL, redact
from tasks.core.engines.postgres import PostgresEngine, pg_errors
from tasks.core.errors import DRError
from tasks.core.pgcluster import find_pg_bin
from tasks.core.report import Check

__all__ = ["DatabaseCheck", "check_database", "run_critical_queries"]


@dataclass(frozen=True)
class DatabaseCheck:
    reachable: bool
    select_one: bool
    amcheck: str  # "ok", "corruption found: ...", "not available: ...", "skipped: ..."
    detail: str

    @property
    def healthy(self) -> bool:
        return self.reachable and self.select_one and not self.amcheck.startswith("corruption")


def _pg_amcheck() -> str | None:
    found = shutil.which("pg_amcheck")
    if found:
        return found
    try:
        candidate = find_pg_bin() / "pg_amcheck"
    except DRError:
        return None
    return str(candidate) if candidate.exists() else None


def check_database(
    url: DatabaseURL, *, amcheck: bool = True, timeout_s: float = 600
) -> DatabaseCheck:
    """Connect, run ``SELECT 1``, then ``pg_amcheck --install-missing`` (heap and btree checks)."""
    if url.engine == "sqlite":
        from tasks.core.engines.sqlite import integrity_check

        if url.path is None or not Path(url.path).exists():
            return DatabaseCheck(False, False, "skipped: no database file", f"{url} is missing")
        try:
            integrity_check(Path(url.path))
        except DRError as exc:
            return DatabaseCheck(True, False, f"corruption found: {exc}", str(exc))
        return DatabaseCheck(True, True, "ok", "PRAGMA integrity_check: ok")
    try:
        with PostgresEngine(url).connect(what="check it") as conn, pg_errors("run SELECT 1"):
            conn.execute("SELECT 1").fetchone()
    except DRError as exc:
        reachable = "cannot run SELECT 1" in str(exc)
        return DatabaseCheck(reachable, False, "skipped: database unusable", str(exc))
    if not amcheck:
        return DatabaseCheck(True, True, "skipped: disabled", "SELECT 1 ok")
    tool = _pg_amcheck()
    if tool is None:
        return DatabaseCheck(True, True, "not available: pg_amcheck not installed", "SELECT 1 ok")
    env = PostgresEngine(url).child_env()
    try:
        proc = subprocess.run(
            [tool, "--install-missing", "--no-password", "--heapallindexed", url.dbname],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return DatabaseCheck(
            True,
            True,
            f"not available: pg_amcheck still running after {timeout_s:g}s (stopped)",
            "SELECT 1 ok",
        )
    output = redact((proc.stdout + proc.stderr).strip())
    if proc.returncode == 0:
        return DatabaseCheck(True, True, "ok", "SELECT 1 ok; pg_amcheck: no corruption found")
    first = " / ".join(output.splitlines()[:3]) or f"exit {proc.returncode}"
    if proc.returncode == 2:  # pg_amcheck: corruption was found
        return DatabaseCheck(True, True, f"corruption found: {first}", output[:2000])
    return DatabaseCheck(True, True, f"not available: {first}", output[:2000])


def run_critical_queries(url: DatabaseURL, queries: Sequence[CriticalQuery]) -> list[Check]:
    """Run each query; its first column of the first row must lie in [min, max]."""
    checks: list[Check] = []
    if not queries:
        return checks
    if url.engine == "sqlite":
        import sqlite3
        from contextlib import closing

        assert url.path is not None
        with closing(sqlite3.connect(f"file:{url.path}?mode=ro", uri=True)) as sconn:
            for q in queries:
                checks.append(_judge(q, lambda sql: sconn.execute(sql).fetchone()))
        return checks
    with PostgresEngine(url).connect(autocommit=False, what="run critical queries") as conn:
        conn.read_only = True  # a check must never change the data it checks
        for q in queries:
            checks.append(_judge(q, lambda sql: conn.execute(sql).fetchone()))
    return checks


def _judge(q: CriticalQuery, run: Any) -> Check:
    bounds = f">= {q.min:g}" if q.max is None else f"{q.min:g}..{q.max:g}"
    if q.min is None and q.max is not None:
        bounds = f"<= {q.max:g}"
    elif q.min is None:
        bounds = "any"
    try:
        row = run(q.sql)
    except (psycopg.Error, Exception) as exc:
        return Check(q.name, bounds, f"error: {redact(str(exc)).splitlines()[0]}", False)
    value = row[0] if row else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return Check(q.name, bounds, repr(value), False)
    ok = (q.min is None or number >= q.min) and (q.max is None or number <= q.max)
    return Check(q.name, bounds, f"{number:g}", ok)
