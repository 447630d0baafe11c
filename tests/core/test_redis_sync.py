"""The snapshot transfer on its thread, against real redis-server processes: URLs read as
redis-py reads them, a bounded buffer (the server waits for a consumer that falls behind),
errors raised on the consumer's side, and ``close()`` ending the thread and the connection at
any point."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from redis.connection import parse_url

from tasks.core import rdb
from tasks.core.engines.redis_sync import _RECV, Endpoint, Transfer, start_early, take_early
from tasks.core.errors import TransientError
from tests.redis_server import RedisProcess

MIB = 1 << 20


def wait_until(what: str, check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def replicas(server: RedisProcess) -> str:
    """The server's replica connections (a SYNC still being served)."""
    listing: bytes = server.client().execute_command("CLIENT", "LIST", "TYPE", "replica")
    return listing.decode()


def transfer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "redis-sync"]


@pytest.fixture
def big(redis_server: RedisProcess) -> RedisProcess:
    """24 MiB that neither LZF nor zstd can shrink."""
    pipe = redis_server.client().pipeline(transaction=False)
    for i in range(24):
        pipe.set(f"big:{i}", os.urandom(MIB))
    pipe.execute()
    return redis_server


@pytest.fixture
def transfers() -> Iterator[list[Transfer]]:
    """Transfers a test starts; all closed at the end, and no thread may outlive them."""
    started: list[Transfer] = []
    yield started
    for t in started:
        t.close()
    assert transfer_threads() == []


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://h:6380/2",
        "redis://user:p%40ss@h/3",
        "redis://:only-pw@h:1/0",
        "redis://h/?db=5",
        "redis://h/not-a-db",
        "redis://h:0/",
        "redis://[::1]:7000/1",
        "rediss://h/0?ssl_ca_certs=/x/ca.pem&ssl_cert_reqs=none&ssl_certfile=c&ssl_keyfile=k",
    ],
)
def test_urls_are_read_as_redis_py_reads_them(url: str) -> None:
    theirs = parse_url(url)
    ours = Endpoint.parse(url)
    assert (ours.host, ours.port, ours.db) == (
        theirs.get("host") or "localhost",
        theirs.get("port") or 6379,
        theirs.get("db") or 0,
    )
    assert (ours.username, ours.password) == (theirs.get("username"), theirs.get("password"))
    assert ours.tls == url.startswith("rediss://")
    assert (ours.ssl_ca_certs, ours.ssl_cert_reqs, ours.ssl_certfile, ours.ssl_keyfile) == (
        theirs.get("ssl_ca_certs"),
        theirs.get("ssl_cert_reqs"),
        theirs.get("ssl_certfile"),
        theirs.get("ssl_keyfile"),
    )
    assert "only-pw" not in str(ours) + repr(ours)


@pytest.mark.parametrize("url", ["redis://h:port/0", "REDIS://h/0", "http://h/0"])
def test_urls_redis_py_refuses_are_refused(url: str) -> None:
    refused = r"Port could not be cast|Redis URL must"
    with pytest.raises(ValueError, match=refused):
        parse_url(url)
    with pytest.raises(ValueError, match=refused):
        Endpoint.parse(url)


def test_the_server_waits_while_the_buffer_is_full(
    big: RedisProcess, transfers: list[Transfer]
) -> None:
    transfer = Transfer(Endpoint.parse(big.url), buffer_bytes=4 * MIB)
    transfers.append(transfer)
    started = transfer.started()
    assert (started.keys, started.mode) == ({"db0": 24}, "diskless")
    held: list[int] = []

    def steady() -> bool:  # nothing more arrived for a while: the thread waits for room
        held.append(transfer.buffered)
        return len(held) > 10 and held[-1] == held[-11] > 0

    wait_until("the buffer to stop growing", steady)
    assert held[-1] <= 4 * MIB + _RECV  # the limit, plus the chunk that crossed it
    summary = rdb.read_rdb(transfer.chunks())  # the rest comes as the consumer takes
    assert summary.counts() == {"db0": 24}


def test_an_error_on_the_thread_is_raised_to_the_consumer_after_what_arrived(
    big: RedisProcess, transfers: list[Transfer]
) -> None:
    transfer = Transfer(Endpoint.parse(big.url), buffer_bytes=4 * MIB)
    transfers.append(transfer)
    transfer.started()
    wait_until("the buffer to fill", lambda: transfer.buffered >= 4 * MIB)
    killed = big.client().execute_command("CLIENT", "KILL", "TYPE", "replica")
    assert killed == 1
    received: list[bytes] = []
    with pytest.raises(TransientError, match="Redis closed the connection during the transfer"):
        received.extend(transfer.chunks())
    assert 4 * MIB <= sum(map(len, received)) < 24 * MIB


def test_close_ends_the_thread_and_the_connection(
    big: RedisProcess, transfers: list[Transfer]
) -> None:
    transfer = Transfer(Endpoint.parse(big.url), buffer_bytes=4 * MIB)
    transfer.started()
    next(transfer.chunks())
    wait_until("the buffer to fill", lambda: transfer.buffered >= 4 * MIB)
    assert "cmd=sync" in replicas(big)
    transfer.close()
    assert transfer_threads() == []
    wait_until("the server to drop the replica", lambda: replicas(big) == "")


def test_close_while_the_server_has_not_answered(transfers: list[Transfer]) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    try:
        transfer = Transfer(Endpoint.parse(f"redis://127.0.0.1:{silent.getsockname()[1]}/0"))
        wait_until("the connection", lambda: transfer._sock is not None)
        t0 = time.monotonic()
        transfer.close()
        assert time.monotonic() - t0 < 0.5  # not the 120 s read timeout
        assert transfer_threads() == []
    finally:
        silent.close()


def test_the_early_transfer_is_taken_for_its_url_only(
    redis_server: RedisProcess, transfers: list[Transfer]
) -> None:
    redis_server.client().set("k", "v")
    start_early(f"  {redis_server.url} ")
    assert take_early(redis_server.url.replace("127.0.0.1", "localhost")) is None  # closed
    wait_until("the server to drop the replica", lambda: replicas(redis_server) == "")
    assert transfer_threads() == []

    start_early(redis_server.url)
    transfer = take_early(redis_server.url)
    assert transfer is not None
    transfers.append(transfer)
    assert transfer.started().keys == {"db0": 1}
    assert rdb.read_rdb(transfer.chunks()).counts() == {"db0": 1}
    assert take_early(redis_server.url) is None  # taken once
