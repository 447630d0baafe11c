"""Real ``redis-server`` processes for the tests: one per test, on a free port, in a temp dir.

Started like the notes say (``--save '' --appendonly no``, ``repl-diskless-sync-delay 0`` so that
a snapshot streams at once); extra flags turn on AOF, TLS or a password. ``stop()`` also stops a
server that a restore started in its place (it is found by its port).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.core.pgcluster import free_port

__all__ = ["RedisProcess", "redis_server"]


class RedisProcess:
    """One redis-server; ``command`` is how to start it again (the restore uses it)."""

    def __init__(self, base: Path, args: Sequence[str] = (), password: str | None = None) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.dir = base
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--repl-diskless-sync-delay",
            "0",
            "--appendonly",
            "no",
            *args,
        ]
        if password:
            self.command += ["--requirepass", password]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            password=self.password,
            socket_timeout=30,
            retry=Retry(NoBackoff(), 0),  # a stopped server answers at once, not after retries
        )

    def start(self, *extra: str) -> RedisProcess:
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, *extra], cwd=self.dir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            if not self.listening():
                if self.proc.poll() is not None:
                    raise RuntimeError((self.dir / "redis.log").read_text())
                time.sleep(0.02)
                continue
            try:
                with self.client() as c:
                    if not int(c.info("persistence")["loading"]):
                        return self
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.dir / "redis.log").read_text()) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop whatever server listens on the port (ours, or one a restore started)."""
        try:
            with self.client() as c:
                c.shutdown(nosave=True)
        except redis.exceptions.RedisError:
            pass
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while self.listening() and time.monotonic() < deadline:
            time.sleep(0.02)

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def restart(self, *extra: str) -> RedisProcess:
        self.stop()
        return self.start(*extra)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh, empty redis-server (no persistence, snapshots stream at once)."""
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()
