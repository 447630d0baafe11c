"""S3 reads that lose their connection in the middle of the body resume where they stopped
(``S3Storage.get``), against moto's server behind a real TCP proxy that cuts the response."""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator

import boto3
import pytest

from tasks.core.errors import PermanentError, TransientError
from tasks.core.storage.s3 import READ_RESUMES, S3Storage
from tests.relay import Relay
from tests.relay import close_all as _close


class CuttingProxy(Relay):
    """A TCP proxy in front of moto. The responses to the first ``times`` requests for which
    ``cut_if(request)`` holds are relayed up to ``after`` bytes of their body, then the
    connection is reset (RST); everything else is relayed untouched."""

    def __init__(
        self, upstream_port: int, cut_if: Callable[[bytes], bool], after: int, times: int
    ) -> None:
        self.cut_if, self.after = cut_if, after
        self._left = times
        self.cuts = 0
        self.requests: list[bytes] = []  # the head of every request ``cut_if`` matched
        self._lock = threading.Lock()
        super().__init__(upstream_port)

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        armed = threading.Event()  # the next response on this connection is to be cut
        threading.Thread(
            target=self._responses, args=(upstream, client, armed), daemon=True
        ).start()
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.cut_if(data):
                    with self._lock:
                        self.requests.append(data.split(b"\r\n\r\n", 1)[0])
                        if self._left > 0:
                            self._left -= 1
                            armed.set()  # before the request goes on: no response can race it
                upstream.sendall(data)
        _close(client, upstream)

    def _responses(
        self, upstream: socket.socket, client: socket.socket, armed: threading.Event
    ) -> None:
        held = b""
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if not armed.is_set():
                    client.sendall(data)
                    continue
                held += data
                head = held.find(b"\r\n\r\n")
                if head < 0 or len(held) < head + 4 + self.after:
                    continue
                client.sendall(held[: head + 4 + self.after])
                _wait_until_received(client)  # a reset discards what the client has not read
                with self._lock:
                    self.cuts += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # wakes the request thread, whose close() then sends the RST (a close() here
                # would wait for its recv to return)
                client.shutdown(socket.SHUT_RD)
                return
        _close(client, upstream)


def _wait_until_received(sock: socket.socket, timeout: float = 30) -> None:
    unsent = array.array("i", [0])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, unsent)  # bytes not yet acknowledged
        if unsent[0] == 0:
            return
        time.sleep(0.01)


@pytest.fixture
def cutting_proxy(moto_endpoint: str) -> Iterator[Callable[..., CuttingProxy]]:
    proxies: list[CuttingProxy] = []

    def make(cut_if: Callable[[bytes], bool], after: int, times: int) -> CuttingProxy:
        proxies.append(CuttingProxy(int(moto_endpoint.rsplit(":", 1)[1]), cut_if, after, times))
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()


def _get(key: str) -> Callable[[bytes], bool]:
    return lambda data: data.startswith(b"GET ") and key.encode() in data.split(b"\r\n", 1)[0]


def _headers(request: bytes) -> dict[str, str]:
    lines = request.decode().split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def _stored(bucket: str, data: bytes) -> None:
    """``data`` under ``p/obj``, written as backups are (multipart beyond one part)."""
    w = S3Storage(bucket, "p").open_writer("obj")
    w.write(data)
    w.commit()


def _through(proxy: CuttingProxy, bucket: str) -> S3Storage:
    return S3Storage(bucket, "p", client=boto3.client("s3", endpoint_url=proxy.endpoint))


def test_a_read_cut_twice_in_the_middle_resumes_with_the_same_bytes(
    bucket: str, cutting_proxy
) -> None:
    data = os.urandom(20 << 20)  # two parts: a multipart ETag
    _stored(bucket, data)
    proxy: CuttingProxy = cutting_proxy(_get("p/obj"), 3 << 20, 2)
    read = b"".join(_through(proxy, bucket).get("obj"))
    assert proxy.cuts == 2
    assert hashlib.sha256(read).hexdigest() == hashlib.sha256(data).hexdigest()
    etag = boto3.client("s3").head_object(Bucket=bucket, Key="p/obj")["ETag"]
    first, *resumed = [_headers(r) for r in proxy.requests]
    assert "range" not in first
    assert [h["range"] for h in resumed] == [f"bytes={3 << 20}-", f"bytes={6 << 20}-"]
    assert [h["if-match"] for h in resumed] == [etag, etag]


def test_an_object_replaced_during_the_read_is_never_stitched_together(
    bucket: str, cutting_proxy
) -> None:
    _stored(bucket, b"a" * (8 << 20))
    proxy: CuttingProxy = cutting_proxy(_get("p/obj"), 3 << 20, 1)
    chunks = _through(proxy, bucket).get("obj")
    got = [next(chunks)]  # the response is under way; the proxy cuts it after 3 MiB
    S3Storage(bucket, "p").put("obj", b"b" * (8 << 20))  # a new backup under the same key
    with pytest.raises(PermanentError, match=r"^S3 object obj was replaced while it was being"):
        got.extend(chunks)
    assert set(b"".join(got)) == {ord("a")}  # only bytes of the first object were handed out
    assert proxy.cuts == 1


def test_a_read_that_never_gets_further_gives_up_with_one_line(bucket: str, cutting_proxy) -> None:
    _stored(bucket, b"c" * (4 << 20))
    proxy: CuttingProxy = cutting_proxy(_get("p/obj"), 1000, 100)  # less than one chunk, always
    with pytest.raises(TransientError) as err:
        b"".join(_through(proxy, bucket).get("obj"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        f"S3 connection lost {READ_RESUMES + 1} times in a row while trying to read obj "
        "(at byte 0): "
    )
    assert proxy.cuts == READ_RESUMES + 1  # the first response and every resume
