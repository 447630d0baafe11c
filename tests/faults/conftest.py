"""The fault-injection suite: each test injects one real fault into a real run and records
what a user would have seen. The records (``DR_FAULT_REPORT``: a JSON file) feed the figures
of docs/reliability.md (``python -m tests.faults.report``)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tasks.core.pgcluster import PgCluster
from tests.conftest import _names
from tests.flows.conftest import app_env, prefect_api  # noqa: F401 - the scenario fault needs them
from tests.relay import Relay, close_all

_RECORDS: list[FaultRecord] = []


@dataclass
class FaultRecord:
    """One injected fault and what came of it (the test's pass/fail is ``survived``)."""

    fault: str
    during: str
    test: str
    injected: bool = False
    false_ok: bool = False  # dr said OK although what it reported is not true
    data_lost: bool = False  # production data or a good backup is gone or changed
    survived: bool = False
    notes: list[str] = field(default_factory=list)


class Fault:
    """Handed to each fault test: ``injected()`` once the fault is in, then ``outcome(...)``
    with the observations, *before* the assertions (so a failing test is still counted)."""

    def __init__(self, record: FaultRecord) -> None:
        self.record = record

    def injected(self) -> None:
        self.record.injected = True

    def outcome(self, *, reported_ok: bool, truly_ok: bool, data_intact: bool) -> None:
        self.record.false_ok = reported_ok and not truly_ok
        self.record.data_lost = not data_intact


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.stash[_passed] = rep.passed
    return rep


_passed = pytest.StashKey[bool]()


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Iterator[Fault]:
    marker = request.node.get_closest_marker("fault")
    assert marker is not None, "a fault test says which row it covers: @pytest.mark.fault(...)"
    record = FaultRecord(marker.args[0], marker.args[1], request.node.nodeid)
    yield Fault(record)
    record.survived = request.node.stash.get(_passed, False) and record.injected
    _RECORDS.append(record)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault(row, during): the fault-matrix row a test covers")


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("DR_FAULT_REPORT")
    if out and _RECORDS:
        Path(out).write_text(json.dumps([asdict(r) for r in _RECORDS], indent=2) + "\n")


# ---- data ---------------------------------------------------------------------------------------

BIG_ROWS = 400_000  # ~40 MB of hex: pg_dump/pg_restore run for a second or more, 2 S3 parts


@pytest.fixture(scope="session")
def big_template(pg: PgCluster) -> str:
    """A database with enough incompressible-ish data that dumps and restores take a while;
    tests clone it (CREATE DATABASE ... TEMPLATE: a file copy)."""
    name = f"faults_big_{os.getpid()}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(pg.url_for(name), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, md5(random()::text) || md5(random()::text) "
            f"|| md5(random()::text) AS pad FROM generate_series(1, {BIG_ROWS}) g"
        )
        conn.execute("ALTER TABLE big ADD PRIMARY KEY (id)")
        conn.execute("CREATE TABLE marker (v text); INSERT INTO marker VALUES ('original')")
    return name


@pytest.fixture
def clone(pg: PgCluster) -> Iterator[Callable[[str], str]]:
    """``clone(template)`` -> a new database copied from ``template``; dropped afterwards with
    its side and kept copies."""
    made: list[str] = []

    def make(template: str) -> str:
        name = f"f{os.getpid()}_{next(_names)}"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        made.append(name)
        return name

    yield make
    with psycopg.connect(pg.url, autocommit=True) as conn:
        for name in made:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{name}%",)
            ).fetchall()
            for (db,) in rows:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


# ---- S3 faults ------------------------------------------------------------------------------


class ResettingProxy(Relay):
    """A TCP proxy in front of moto that resets (RST) every connection on which a request
    matching ``reset_if`` is sent; everything else is relayed untouched."""

    def __init__(self, upstream_port: int, reset_if: Callable[[bytes], bool]) -> None:
        self.reset_if = reset_if
        self.resets = 0
        super().__init__(upstream_port)

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, inspect: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if inspect and self.reset_if(data):
                    self.resets += 1
                    src.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                dst.sendall(data)
        close_all(src, dst)


@pytest.fixture
def resetting_proxy(moto_endpoint: str) -> Iterator[Callable[[Callable[[bytes], bool]], Any]]:
    proxies: list[ResettingProxy] = []

    def make(reset_if: Callable[[bytes], bool]) -> ResettingProxy:
        proxies.append(ResettingProxy(int(moto_endpoint.rsplit(":", 1)[1]), reset_if))
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()
