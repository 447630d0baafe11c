"""The demo application: a tiny HTTP service over the demo database (users, bots, trades).

``GET /health`` answers 200 when the database answers ``SELECT count(*) FROM users`` and every
table has rows, 503 otherwise; ``GET /stats`` gives the counts. Run as
``python -m tasks.core.demoapp --port 8080`` with ``DATABASE_URL`` set (SQLite or PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tasks.core.dburl import parse_database_url
from tasks.core.engines.postgres import PostgresEngine

TABLES = ("users", "bots", "trades")


def _counts(url: str) -> dict[str, int]:
    parsed = parse_database_url(url)
    query = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in TABLES)
    if parsed.engine == "sqlite":
        with closing(sqlite3.connect(f"file:{parsed.path}?mode=ro", uri=True, timeout=2)) as c:
            row = c.execute(query).fetchone()
    else:
        with PostgresEngine(parsed).connect(what="serve the demo app") as conn:
            row = conn.execute(query).fetchone()
    assert row is not None
    return dict(zip(TABLES, (int(n) for n in row), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    url = os.environ["DATABASE_URL"]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                counts = _counts(url)
                ok = all(counts.values())
                body = json.dumps(counts)
            except Exception as exc:
                ok, body = False, json.dumps({"error": type(exc).__name__})
            status = 200 if ok or self.path == "/stats" else 503
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *a: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
