"""Real services for the pgBackRest tests: a PostgreSQL cluster that archives its WAL into a
pgBackRest repository on a local path and/or on S3 (moto behind stunnel: pgBackRest speaks only
HTTPS to S3), set up the way a user does it (``dr pitr setup`` through the core)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tasks.core.config import Config, load_config
from tasks.core.pgcluster import PgCluster, free_port
from tasks.core.pitr import setup

__all__ = ["PitrEnv", "cleanup", "make_pitr_env", "pitr_env", "stunnel_s3"]


@dataclass
class PitrEnv:
    cluster: PgCluster
    base: Path
    config: Path
    url: str

    def cfg(self) -> Config:
        return load_config(self.config)

    def sql(self, query: str, dbname: str = "app") -> list[tuple[object, ...]]:
        with psycopg.connect(self.cluster.url_for(dbname), autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def one(self, query: str, dbname: str = "app") -> object:
        return self.sql(query, dbname)[0][0]


def make_pitr_env(
    *,
    s3: tuple[str, int] | None = None,
    bucket: str | None = None,
    local_repo: bool = True,
    archive_timeout_s: int = 60,
    extra: str = "",
) -> PitrEnv:
    """A started cluster with an ``app`` database (table ``items``), configured, set up."""
    base = Path(tempfile.mkdtemp(prefix="dr-pitr-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres", "postgres")
    cluster = PgCluster(base / "pg", settings={"archive_mode": "on"})
    cluster.start()
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
    with psycopg.connect(cluster.url_for("app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, note text, at timestamptz)")
        conn.execute(
            "INSERT INTO items (note, at) SELECT 'seed', now() FROM generate_series(1, 100)"
        )
    url = cluster.url_for("app")
    lines = [
        'environment = "pitr-test"',
        "[storage]",
        f'backup_dir = "{base / "backups"}"',
        *([f's3_bucket = "{bucket}"'] if bucket else []),
        "[[databases]]",
        'name = "main"',
        f'url = "{url}"',
        "[pitr]",
        f'data_dir = "{cluster.data}"',
        f'socket_dir = "{cluster.base}"',
        f'config_dir = "{base / "pgbackrest"}"',
        f"archive_timeout_s = {archive_timeout_s}",
        "process_max = 2",
    ]
    if local_repo:
        lines.append(f'repo_path = "{base / "repo"}"')
    if s3 is not None:
        host, port = s3
        lines += [
            "s3 = true",
            f's3_endpoint = "{host}"',
            f"s3_port = {port}",
            's3_uri_style = "path"',
            "s3_verify_tls = false",
        ]
    config = base / "dr.toml"
    config.write_text("\n".join(lines) + "\n" + extra)
    env = PitrEnv(cluster, base, config, url)
    setup(env.cfg())
    return env


def cleanup(env: PitrEnv) -> None:
    for data in env.cluster.base.glob("data*"):
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(env.cluster.bin / "pg_ctl"), "-D", str(data),
             "-m", "immediate", "stop"],
            capture_output=True, check=False,
        )  # fmt: skip
    shutil.rmtree(env.base, ignore_errors=True)


@pytest.fixture
def pitr_env() -> Iterator[PitrEnv]:
    """Local repository only (the fast path)."""
    env = make_pitr_env()
    yield env
    cleanup(env)


@pytest.fixture(scope="session")
def stunnel_s3(moto_endpoint: str) -> Iterator[tuple[str, int]]:
    """A TLS proxy in front of moto (self-signed certificate): (host, port) for pgBackRest."""
    d = Path(tempfile.mkdtemp(prefix="dr-stunnel-"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        capture_output=True, check=True,
    )  # fmt: skip
    port = free_port()
    moto_port = int(moto_endpoint.rsplit(":", 1)[1])
    (d / "stunnel.conf").write_text(
        f"foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{port}\n"
        f"connect = 127.0.0.1:{moto_port}\ncert = {d / 'cert.pem'}\nkey = {d / 'key.pem'}\n"
    )
    proc = subprocess.Popen(
        ["stunnel4", str(d / "stunnel.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield ("127.0.0.1", port)
    proc.terminate()
    proc.wait()
    shutil.rmtree(d, ignore_errors=True)
