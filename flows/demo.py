"""``dr demo``: the database-corruption scenario end to end on one machine, on embedded defaults.

A demo environment in ``./dr-demo``: the app database (users, bots, trades) on a throwaway local
PostgreSQL cluster in the temp dir (or SQLite when PostgreSQL's server binaries are absent),
the demo app as a local process serving ``/health``, and a ``dr.toml`` describing both. Then:
back up, corrupt the database (the app turns unhealthy), run database-corruption with
``confirm``, print the report.
Everything it started is stopped at the end; it can run again at once.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core import health
from tasks.core.backup import backup_database
from tasks.core.catalog import Catalog
from tasks.core.config import HealthCheck, load_config
from tasks.core.dburl import parse_database_url
from tasks.core.environment import build_platform
from tasks.core.errors import ConfigError, DRError
from tasks.core.pgcluster import PgCluster, find_pg_bin, free_port
from tasks.core.platform import ScaleState
from tasks.core.sampledata import create_postgres_app_db, create_sqlite_app_db
from tasks.core.storage.local import LocalStorage

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = """\
# Written by `dr demo`: the demo environment, on the local platform.
environment = "demo"
health_deadline_s = 30

[storage]
backup_dir = "backups"

[[databases]]
name = "main"
url = "{url}"

[[databases.critical_queries]]
name = "users exist"
sql = "SELECT count(*) FROM users"

[[databases.critical_queries]]
name = "every trade has its bot"
sql = "SELECT count(*) FROM trades t LEFT JOIN bots b ON b.id = t.bot_id WHERE b.id IS NULL"
min = 0
max = 0

[platform]
kind = "local"
state_dir = "state"
ready_timeout_s = 30

[[platform.workloads]]
name = "backend"
kind = "process"
replicas = 1
command = ["{python}", "-m", "tasks.core.demoapp", "--port", "{port}"]
env = {{ DATABASE_URL = "{url}" }}
health_url = "http://127.0.0.1:{port}/health"

[[health]]
url = "http://127.0.0.1:{port}/health"
"""


def _corrupt(url: str) -> None:
    """What the runbook calls corruption, done on purpose: a table gone, another emptied."""
    parsed = parse_database_url(url)
    statements = ["DROP TABLE trades", "DELETE FROM bots"]
    if parsed.engine == "sqlite":
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(parsed.path or "")) as conn, conn:
            for sql in statements:
                conn.execute(sql)
        return
    import psycopg

    with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def run_demo(workdir: Path, *, use_sqlite: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Build the demo environment, break it, recover it; returns the scenario's summary."""
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / "dr.toml").exists():
        raise ConfigError(
            f"{workdir} is not empty and not a dr demo directory: choose another "
            "--dir (the demo replaces its directory)"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cluster: PgCluster | None = None
    if not use_sqlite:
        try:
            find_pg_bin()
            # in the system temp dir: the postgres OS user may not be able to enter workdir
            cluster = PgCluster()
        except ConfigError:
            say("PostgreSQL server binaries not found: the demo uses SQLite")
    platform = None
    try:
        if cluster is not None:
            cluster.start()
            import psycopg

            with psycopg.connect(cluster.url, autocommit=True) as conn:
                conn.execute("CREATE DATABASE cryptoorchestrator")
            url = cluster.url_for("cryptoorchestrator")
            counts = create_postgres_app_db(parse_database_url(url).conninfo)
        else:
            url = f"sqlite:///{workdir / 'app.db'}"
            counts = create_sqlite_app_db(workdir / "app.db")
        say(f"1. demo database {url}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))

        port = free_port()
        config = workdir / "dr.toml"
        config.write_text(DEMO_CONFIG.format(url=url, python=sys.executable, port=port))
        cfg = load_config(config)
        platform = build_platform(cfg)
        platform.scale_up(ScaleState({"backend": 1}))
        platform.wait_ready({"backend": 1}, 30)
        say(f"2. demo app running: http://127.0.0.1:{port}/health")

        backup = backup_database(
            parse_database_url(url), Catalog([LocalStorage(workdir / "backups")])
        )
        say(f"3. backup {backup.manifest.backup_id} taken")

        _corrupt(url)
        [probe] = health.check_health(
            [HealthCheck(url=f"http://127.0.0.1:{port}/health")], deadline_s=0
        )
        say(f"4. database corrupted (trades dropped, bots emptied): /health says {probe.detail}")

        say("5. running the database-corruption scenario (Prefect, confirm=True)...")
        from flows.database_corruption import database_corruption

        state = database_corruption(config=str(config), confirm=True, return_state=True)
        summary: dict[str, Any] = state.result(raise_on_failure=False)
        (workdir / "report.md").write_text(summary["report"])
        summary["state"] = state.type.value
        return summary
    finally:
        if platform is not None:
            try:
                platform.scale_down(["backend"])
            except DRError as exc:
                say(f"could not stop the demo app: {exc}")
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.base, ignore_errors=True)
