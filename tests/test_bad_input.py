"""Bad input, across every command: one clear line on stderr, the documented exit code (2 for
usage and configuration, 1 for an operation that could not be done), no traceback, and nothing
changed: the backup directory, the bucket and the databases are exactly as before.

Each row runs the real ``dr`` command against a real world: a SQLite database with one backup
in a local directory, moto's S3 over HTTP, and (for the database-name rows) PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tasks.core.pgcluster import PgCluster
from tasks.core.sampledata import create_sqlite_app_db
from tests.conftest import psql, run_dr


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256: what "nothing changed" compares."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _bucket_keys(bucket: str) -> list[str]:
    return sorted(
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])
    )


@pytest.fixture
def world(tmp_path: Path, bucket: str) -> dict[str, str]:
    db = tmp_path / "app.db"
    create_sqlite_app_db(db, users=20)
    (tmp_path / "target.db").write_bytes(db.read_bytes())
    r = run_dr(
        "backup", "--database-url", f"sqlite:///{db}", "--backup-dir", str(tmp_path / "backups"),
        "--s3-bucket", bucket, "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    configs = {
        "wrongtype.toml": '[storage]\nretention_days = "thirty"\n',
        "unknownkey.toml": "[storage]\nbakup_dir = 'x'\n",
        "notoml.toml": "environment = \n",
        "empty_db.toml": "[[databases]]\nname = ''\n",
        "badurl.toml": "[[databases]]\nname = 'main'\nurl = 'mysql://h/db'\n",
    }
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    return {
        "tmp": str(tmp_path),
        "backups": str(tmp_path / "backups"),
        "db": str(db),
        "target": str(tmp_path / "target.db"),
        "bucket": bucket,
    }


PASSWORD = "hunter2-bad-input"
ROWS: list[tuple[str, list[str], dict[str, str], int, str]] = [
    # -- malformed URLs and unknown schemes --
    ("url-no-db", ["backup", "--database-url", "postgresql://"], {}, 2, "names no database"),
    ("url-port", ["backup", "--database-url", "postgresql://h:port/db"], {}, 2, "invalid"),
    ("url-scheme", ["backup", "--database-url", "http://x/y"], {}, 2, "unsupported database URL"),
    ("url-relative", ["backup", "--database-url", "sqlite:app.db"], {}, 2, "not a database URL"),
    (
        "url-restore-scheme",
        ["restore", "--database-url", "mongodb://h/db", "--latest", "--confirm"],
        {},
        2,
        "unsupported database URL",
    ),
    # -- unknown backup ids --
    (
        "unknown-id",
        ["restore", "--database-url", "sqlite:///{target}", "--backup-id", "nosuch", "--confirm"],
        {},
        1,
        "no backup with id 'nosuch'",
    ),
    (
        "id-path-escape",
        [
            "restore",
            "--database-url",
            "sqlite:///{target}",
            "--backup-id",
            "../../etc",
            "--confirm",
        ],
        {},
        1,
        "no backup with id '../../etc'",
    ),
    (
        "backup-file-outside",
        ["restore", "--database-url", "sqlite:///{target}", "--backup-file", "{db}", "--confirm"],
        {},
        2,
        "is not inside a backup folder",
    ),
    # -- timestamps: future, before the first backup, unparsable --
    (
        "before-future",
        ["restore", "--database-url", "sqlite:///{target}", "--before", "2999-01-01T00:00:00Z"],
        {},
        2,
        "is in the future",
    ),
    (
        "before-first-backup",
        [
            "restore",
            "--database-url",
            "sqlite:///{target}",
            "--before",
            "2000-01-01T00:00:00Z",
            "--confirm",
        ],
        {},
        1,
        "no good backup taken before 2000-01-01",
    ),
    (
        "before-unparsable",
        ["restore", "--database-url", "sqlite:///{target}", "--before", "2026-13-45"],
        {},
        2,
        "cannot read '2026-13-45' as a time",
    ),
    ("audit-since", ["audit", "--since", "last tuesday"], {}, 2, "--since: cannot read"),
    # -- configuration files: missing, not TOML, wrong types, unknown or empty keys --
    ("config-missing", ["status", "--config", "{tmp}/nosuch.toml"], {}, 2, "does not exist"),
    ("config-not-toml", ["status", "--config", "{tmp}/notoml.toml"], {}, 2, "not valid TOML"),
    (
        "config-wrong-type",
        ["metrics", "--config", "{tmp}/wrongtype.toml"],
        {},
        2,
        "storage.retention_days: Input should be a valid integer",
    ),
    (
        "config-unknown-key",
        ["retention", "--config", "{tmp}/unknownkey.toml"],
        {},
        2,
        "storage.bakup_dir: Extra inputs are not permitted",
    ),
    ("config-empty-name", ["audit", "--config", "{tmp}/empty_db.toml"], {}, 2, "databases.0.name"),
    (
        "config-scenario",
        ["scenario", "database-corruption", "--config", "{tmp}/badurl.toml", "--dry-run"],
        {},
        2,
        "unsupported database URL scheme",
    ),
    # -- buckets and credentials --
    (
        "bucket-missing",
        ["backup", "--database-url", "sqlite:///{db}", "--s3-bucket", "no-such-bucket-here"],
        {},
        2,
        "S3 bucket 'no-such-bucket-here' does not exist",
    ),
    (
        "bucket-malformed",
        ["restore", "--list", "--s3-bucket", "bucket/with/slash"],
        {},
        2,
        "invalid S3 bucket name",
    ),
    (
        "no-credentials",
        ["backup", "--database-url", "sqlite:///{db}", "--s3-bucket", "{bucket}"],
        {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/x"},
        2,
        "no AWS credentials found",
    ),
    (
        "wrong-db-credentials",
        ["backup", "--database-url", f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/app"],
        {},
        1,
        "cannot connect to postgresql://nobody@127.0.0.1:1/app",
    ),
    (
        "sse-unknown",
        ["backup", "--database-url", "sqlite:///{db}", "--s3-bucket", "{bucket}"],
        {"DR_S3_SSE": "kms"},
        2,
        "unknown S3 server-side encryption",
    ),
    (
        "bad-encryption-key",
        ["backup", "--database-url", "sqlite:///{db}"],
        {"DR_ENCRYPTION_KEY": "short"},
        2,
        "openssl rand -base64 32",
    ),
    # -- the backup dir is not a directory --
    ("backup-dir-file", ["restore", "--list", "--backup-dir", "{db}"], {}, 2, "not a directory"),
    # -- consent --
    (
        "no-confirm",
        ["restore", "--database-url", "sqlite:///{target}", "--latest"],
        {},
        2,
        "add --confirm",
    ),
    ("unknown-scenario", ["scenario", "meteor-strike", "--dry-run"], {}, 2, "unknown scenario"),
    # -- what the command line parser refuses: one line too, with where to look --
    (
        "flag-wrong-type",
        ["restore", "--list", "--jobs", "two"],
        {},
        2,
        "Invalid value for '--jobs': Input should be a valid integer",
    ),
    ("flag-unknown", ["pin", "x", "--backup-dirr", "y"], {}, 2, "No such option: --backup-dirr"),
    ("argument-missing", ["unpin"], {}, 2, "Missing argument 'backup_id'. (see: dr unpin --help)"),
    (
        "command-unknown",
        ["restor", "--latest"],
        {},
        2,
        "No such command 'restor'. Did you mean 'restore'? (see: dr --help)",
    ),
    ("port-out-of-range", ["up", "--port", "99999"], {}, 2, "Invalid value for '--port'"),
    ("metrics-port", ["metrics", "--serve", "-1"], {}, 2, "Invalid value for '--serve'"),
    # -- the other commands --
    ("pin-unknown-id", ["pin", "nosuch"], {}, 1, "no backup with id 'nosuch'"),
    ("unpin-not-pinned", ["unpin", "nosuch"], {}, 1, "no pinned backup 'nosuch'"),
    ("pitr-unconfigured", ["pitr", "info"], {}, 2, "add a [pitr] section to dr.toml"),
    (
        "redis-unknown-id",
        ["redis", "restore", "--redis-url", "redis://127.0.0.1:1/0", "--backup-id", "nosuch"],
        {},
        1,
        "no backup with id 'nosuch'",
    ),
]


@pytest.mark.parametrize(
    ("args", "env", "code", "message"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_bad_input_is_one_line_and_changes_nothing(
    world: dict[str, str], args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    tmp = Path(world["tmp"])
    before, keys = _tree(tmp), _bucket_keys(world["bucket"])
    full = [a.format(**world) for a in args]
    if "--backup-dir" not in full and full[0] in ("backup", "restore", "audit"):
        full += ["--backup-dir", world["backups"]]
    r = run_dr(*full, cwd=tmp, env={"DATABASE_URL": "", "DR_ENCRYPTION_KEY": "", **env})
    stderr = r.stderr.strip()
    assert r.returncode == code, (r.stdout, stderr)
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("dr: error: ")
    assert message in stderr
    assert PASSWORD not in stderr + r.stdout
    assert _tree(tmp) == before
    assert _bucket_keys(world["bucket"]) == keys


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only filesystem (as root, permissions alone would not stop us)."""
    path = tmp_path / "ro-backups"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_backup_dir_is_a_config_error(tmp_path: Path, read_only_dir: Path) -> None:
    db = tmp_path / "app.db"
    create_sqlite_app_db(db, users=5)
    r = run_dr("backup", "--database-url", f"sqlite:///{db}", "--backup-dir", str(read_only_dir))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"dr: error: backup dir {read_only_dir} is not writable: Read-only file system"
    )
    assert not any(read_only_dir.iterdir())


@pytest.mark.parametrize("name", ["select", "user", 'we"ird', "it's", "Mixed Case"])
def test_target_names_that_are_keywords_or_have_quotes_restore_exactly(
    pg: PgCluster, dbname: str, tmp_path: Path, name: str
) -> None:
    """Not bad input at all: identifiers are quoted everywhere, so these simply work."""
    psql(pg.url_for(dbname), "CREATE TABLE t (a int); INSERT INTO t SELECT generate_series(1, 7)")
    backups = str(tmp_path / "b")
    r = run_dr("backup", "--database-url", pg.url_for(dbname), "--backup-dir", backups)
    assert r.returncode == 0, r.stderr
    target = f"{dbname}_{name}"
    from urllib.parse import quote

    url = pg.url_for(quote(target, safe=""))
    r = run_dr(
        "restore", "--database-url", url, "--latest", "--source-database", dbname,
        "--backup-dir", backups, "--confirm",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert psql(url, "SELECT count(*) FROM t") == "7"
    r = run_dr(
        "restore", "--database-url", url, "--latest", "--source-database", dbname,
        "--backup-dir", backups, "--confirm",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr  # again: the previous copy is kept under a quoted name
    kept = psql(pg.url, f"SELECT count(*) FROM pg_database WHERE datname LIKE '{dbname}%pre%'")
    assert int(kept) >= 1
    assert os.path.exists(backups)


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_a_missing_postgresql_client_tool_says_what_to_install(
    pg: PgCluster, dbname: str, tmp_path: Path, command: str
) -> None:
    """dr runs pg_dump, pg_restore and psql: on a machine without them, one line says which
    program is missing and what to install (exit 2, a setup matter), and nothing changes."""
    url = pg.url_for(dbname)
    psql(url, "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    backups = tmp_path / "backups"
    r = run_dr("backup", "--database-url", url, "--backup-dir", str(backups))
    assert r.returncode == 0, r.stderr
    before = _tree(backups)
    args = ["--database-url", url, "--backup-dir", str(backups)]
    if command == "restore":
        args += ["--latest", "--confirm"]

    r = run_dr(command, *args, env={"PATH": str(tmp_path / "empty")})  # no tools at all

    tool = "pg_dump" if command == "backup" else "pg_restore"
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith(f"dr: error: {tool} not found on PATH: install the ")
    assert "postgresql-client" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # the backups as they were; a failed restore is on the audit trail, as every attempt is
    assert {k: v for k, v in _tree(backups).items() if not k.startswith("_audit/")} == before
    assert psql(url, "SELECT count(*) FROM t") == "2"
    leftover = psql(pg.url, f"SELECT count(*) FROM pg_database WHERE datname <> '{dbname}' "
                    f"AND datname LIKE '{dbname}%'")  # fmt: skip
    assert leftover == "0"  # no side database left behind
