"""The runbook's application data (users, bots, trades), generated for demos, tests and benches.

Deterministic for a given seed, so two runs produce the same rows and counts.
"""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from pathlib import Path

__all__ = ["SCHEMA_SQL", "create_postgres_app_db", "create_sqlite_app_db", "rows"]

SCHEMA_SQL = """
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE bots (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
                   name TEXT NOT NULL, strategy TEXT NOT NULL, active INTEGER NOT NULL);
CREATE TABLE trades (id INTEGER PRIMARY KEY, bot_id INTEGER NOT NULL REFERENCES bots(id),
                     symbol TEXT NOT NULL, side TEXT NOT NULL, qty NUMERIC NOT NULL,
                     price NUMERIC NOT NULL, created_at TEXT NOT NULL);
"""

_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD")
_STRATEGIES = ("grid", "dca", "momentum", "arbitrage")


def rows(users: int, seed: int = 7) -> tuple[list[tuple[object, ...]], ...]:
    """(users, bots, trades) rows: 2 bots per user, 10 trades per bot."""
    rnd = random.Random(seed)  # noqa: S311 - sample data, not secrets
    Rows = list[tuple[object, ...]]
    u: Rows = [
        (i, f"user{i}@example.com", f"2026-01-{1 + i % 28:02d}T00:00:00Z")
        for i in range(1, users + 1)
    ]
    b: Rows = [
        (i, 1 + (i - 1) // 2, f"bot-{i}", rnd.choice(_STRATEGIES), int(i % 3 != 0))
        for i in range(1, 2 * users + 1)
    ]
    t: Rows = [
        (
            i,
            1 + (i - 1) // 10,
            rnd.choice(_SYMBOLS),
            rnd.choice(("buy", "sell")),
            round(rnd.uniform(0.001, 5), 6),
            round(rnd.uniform(0.1, 60000), 2),
            f"2026-02-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
        )
        for i in range(1, 20 * users + 1)
    ]
    return u, b, t


def create_sqlite_app_db(path: Path, users: int = 100, seed: int = 7) -> dict[str, int]:
    """Create (replace) a SQLite app database at ``path``; returns rows per table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    u, b, t = rows(users, seed)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(SCHEMA_SQL)
        conn.executemany("INSERT INTO users VALUES (?, ?, ?)", u)
        conn.executemany("INSERT INTO bots VALUES (?, ?, ?, ?, ?)", b)
        conn.executemany("INSERT INTO trades VALUES (?, ?, ?, ?, ?, ?, ?)", t)
    return {"users": len(u), "bots": len(b), "trades": len(t)}


def create_postgres_app_db(conninfo: str, users: int = 100, seed: int = 7) -> dict[str, int]:
    """Create the app tables in the (empty) PostgreSQL database ``conninfo``; rows per table."""
    import psycopg

    u, b, t = rows(users, seed)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA_SQL)
        cur.executemany("INSERT INTO users VALUES (%s, %s, %s)", u)
        cur.executemany("INSERT INTO bots VALUES (%s, %s, %s, %s, %s)", b)
        cur.executemany("INSERT INTO trades VALUES (%s, %s, %s, %s, %s, %s, %s)", t)
    return {"users": len(u), "bots": len(b), "trades": len(t)}
