"""Real services for the suite: a throwaway PostgreSQL cluster and moto's S3 server over HTTP.

Nothing is patched: boto3 reaches moto through ``AWS_ENDPOINT_URL`` like it would reach any
S3-compatible store, and psycopg/pg_dump talk to a real PostgreSQL started here.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import psycopg.sql
import pytest

from tasks.core.pgcluster import PgCluster, free_port
from tests.k8s_emulator import k8s_emulator  # noqa: F401 - a fixture for every test module
from tests.redis_server import redis_server  # noqa: F401 - a fixture for every test module

REPO = Path(__file__).resolve().parent.parent
DR = str(Path(sys.executable).with_name("dr"))
_names = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the session (page checksums on, for corruption tests)."""
    with PgCluster(data_checksums=True) as cluster:
        yield cluster


@pytest.fixture
def dbname(pg: PgCluster) -> Iterator[str]:
    """A fresh, empty database name on the session cluster; dropped afterwards with its
    side/kept copies."""
    name = f"t{os.getpid()}_{next(_names)}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(pg.url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{name}%",)
        ).fetchall()
        for (db,) in rows:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(db)
                )
            )


def psql(url: str, sql: str) -> str:
    """Run SQL through psql (like an operator would); returns unaligned output."""
    proc = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-Atq", url, "-c", sql],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's standalone server on a free port; AWS settings point boto3 (and `dr`) at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"dr-test-{os.getpid()}-{next(_names)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def run_dr(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `dr` console script, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [DR, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        check=False,
    )
