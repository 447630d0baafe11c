"""A throwaway local PostgreSQL cluster: ``initdb`` + ``pg_ctl`` in a directory of its own.

Used by the demo, the benchmarks and the test suite. PostgreSQL refuses to run as root, so when
this process is root the server runs as the unprivileged ``postgres`` OS user (``runuser``) and the
directory is handed to that user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tasks.core.errors import CommandFailed, ConfigError

__all__ = ["PgCluster", "find_pg_bin", "free_port"]

_DEFAULT_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",  # throwaway data: durability is not the point, speed is
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_connections": "50",
    "shared_buffers": "128MB",
}


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pg_bin() -> Path:
    """The directory holding ``initdb``/``pg_ctl``; raises ConfigError when there is none."""
    env = os.environ.get("DR_PG_BIN")
    candidates = [Path(env)] if env else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    raise ConfigError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql "
        "or set DR_PG_BIN to their directory"
    )


class PgCluster:
    """A PostgreSQL cluster under ``base`` (a new temp dir by default), started on a free port.

    Use as a context manager, or call ``start()``/``stop()``; ``stop(remove=True)`` deletes it.
    """

    def __init__(
        self,
        base: Path | None = None,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        data_checksums: bool = False,
    ) -> None:
        self.bin = find_pg_bin()
        self.base = base or Path(tempfile.mkdtemp(prefix="dr-pg-"))
        self.port = port or free_port()
        self.data = self.base / "data"
        self.settings = {**_DEFAULT_SETTINGS, **(settings or {})}
        self.data_checksums = data_checksums
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CommandFailed(f"{args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)  # noqa: S103 - the postgres user must traverse it
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        args = [
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]
        if self.data_checksums:
            args.append("--data-checksums")
        self._run(*args)
        conf = dict(self.settings, port=str(self.port), unix_socket_directories=f"'{self.base}'")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())

    def start(self) -> PgCluster:
        if not self.data.exists():
            self.init()
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self, *, remove: bool = False) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(remove=True)
