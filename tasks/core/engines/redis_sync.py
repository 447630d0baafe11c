"""The Redis snapshot transfer, with the standard library only: ``dr redis backup`` starts it
before the rest of dr is imported (flows/entry.py), so that the server forks and streams while
Python imports typer, pydantic and redis-py; ``snapshot()`` (redis.py) takes it over.

``Endpoint.parse`` reads a ``redis://`` / ``rediss://`` URL as redis-py reads it (host, port,
db, user, password, the ``ssl_*`` options of the query string).

``Transfer`` runs on a thread: connect (TLS for ``rediss://``), then in one round trip
``AUTH [user] password``, ``INFO keyspace`` (the keys before the snapshot), ``REPLCONF capa eof``
(diskless transfers welcome), ``REPLCONF rdb-only 1`` (no replication stream afterwards; older
servers ignore it); then ``SYNC``. The answer is ``$<len>`` + len bytes (the master saved to
disk first) or ``$EOF:<40-byte mark>`` + bytes + the mark (diskless); newlines before it are the
master's keep-alives while it forks. The bytes are handed to the consumer about 1 MiB at a time
(fewer wake-ups than the server's 16 KiB pieces), at most ``BUFFER_BYTES`` (+ one piece) ahead
of it: when the consumer falls behind, the thread waits and the server waits for the socket, as
it would for a slow reader. Receiving thus overlaps what the consumer does with the bytes (zstd,
sha256, writes). An error on the thread is raised to the
consumer as it is: socket and TLS errors as OSError (redis.py's ``redis_errors`` words them),
the connection closed as TransientError, a refusal (AUTH, INFO, SYNC) as PermanentError.
``close()`` ends the thread at any point: the socket is shut down and the thread exits.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlparse

from tasks.core.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "BUFFER_BYTES",
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "Endpoint",
    "Started",
    "Transfer",
    "discard_early",
    "start_early",
    "take_early",
]

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # a master may fork for a while; it sends a newline every second
BUFFER_BYTES = 16 << 20  # received, not yet consumed: covers dr's imports (docs/redis.md)
_BATCH = 1 << 20  # the consumer takes this much at a time (the server sends 16 KiB pieces) ...
_LINGER_S = 0.02  # ... or what came within this time: a stalled stream still gets written
_RECV = 1 << 20
_MARK_LEN = 40
_JOIN_S = 1.0  # close(): a thread still connecting (not interruptible) ends on its own timeout


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, from a ``redis://`` / ``rediss://`` URL; ``str()`` is the
    redacted form."""

    raw: str = field(repr=False)  # with the password: never print it
    host: str
    port: int
    db: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool
    ssl_ca_certs: str | None
    ssl_cert_reqs: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None

    @classmethod
    def parse(cls, raw: str) -> Self:
        """Read ``raw`` as redis-py's ``parse_url`` does; ValueError when it cannot (a port
        that is not a number, another scheme)."""
        if not raw.startswith(("redis://", "rediss://")):
            raise ValueError("Redis URL must start with redis:// or rediss://")
        url = urlparse(raw)
        query = {name: values[0] for name, values in parse_qs(url.query).items() if values}
        db = int(query["db"]) if "db" in query else None
        if db is None and url.path:
            with contextlib.suppress(ValueError):
                db = int(unquote(url.path).replace("/", ""))
        return cls(
            raw,
            unquote(url.hostname) if url.hostname else "localhost",
            url.port or 6379,
            db or 0,
            unquote(url.username) if url.username else None,
            unquote(url.password) if url.password else None,
            url.scheme == "rediss",
            query.get("ssl_ca_certs"),
            query.get("ssl_cert_reqs"),
            query.get("ssl_certfile"),
            query.get("ssl_keyfile"),
        )

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class Started:
    """What the server said before the RDB."""

    keys: dict[str, int]  # INFO keyspace before SYNC: "db0" -> keys
    expiring: dict[str, int]  # "db0" -> keys with a TTL
    sent_at: datetime  # when SYNC was sent
    mode: str  # "disk" or "diskless"


_END = object()  # the last item: the RDB is complete


class Transfer:
    """One snapshot transfer on its own thread, started at once. The consumer calls
    ``started()``, then iterates ``chunks()``, and always ``close()``."""

    def __init__(
        self,
        endpoint: Endpoint,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        assert buffer_bytes >= _BATCH
        self.endpoint, self._now, self._limit = endpoint, now, buffer_bytes
        self._items: deque[object] = deque()  # bytes, and Started / _END / an exception
        self._held = 0  # bytes in _items
        self._marks = 0  # other items in _items
        self._cond = threading.Condition()
        self._closed = False
        self._sock: socket.socket | None = None
        # a daemon: a thread stuck connecting never keeps the process alive
        self._thread = threading.Thread(target=self._run, name="redis-sync", daemon=True)
        self._thread.start()

    # ---- the consumer's side

    def started(self) -> Started:
        """Wait until the server answered SYNC; raises what stopped it before that."""
        data, mark = self._take()
        assert not data
        if isinstance(mark, BaseException):
            raise mark
        assert isinstance(mark, Started)
        return mark

    def chunks(self) -> Iterator[bytes]:
        """The RDB's bytes (after ``started()``), about ``_BATCH`` at a time; raises what broke
        the transfer (after the bytes that came before)."""
        while True:
            data, mark = self._take()
            if data:
                yield data[0] if len(data) == 1 else b"".join(data)
            if mark is _END:
                return
            if isinstance(mark, BaseException):
                raise mark

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken."""
        with self._cond:
            return self._held

    def close(self) -> None:
        """Stop the transfer (if it still runs) and wait for the thread to end."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._held = self._marks = 0
            if self._sock is not None:  # wakes the thread from recv
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN_S)

    def _take(self) -> tuple[list[bytes], object]:
        """Bytes, ``_BATCH`` of them unless another item comes first or ``_LINGER_S`` passes
        after the first; and that item (Started, _END, an exception) if it was reached, else
        None. Waits for one of those."""
        with self._cond:
            deadline = None
            while self._held < _BATCH and not self._marks:
                if self._held and deadline is None:
                    deadline = time.monotonic() + _LINGER_S
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            data: list[bytes] = []
            size = 0
            mark: object = None
            while self._items and size < _BATCH:
                item = self._items.popleft()
                if not isinstance(item, bytes):
                    self._marks -= 1
                    mark = item
                    break
                data.append(item)
                size += len(item)
            self._held -= size
            self._cond.notify_all()
        return data, mark

    # ---- the thread's side

    def _put(self, item: object) -> bool:
        """Hand ``item`` over, waiting while the buffer is full; False once closed."""
        with self._cond:
            while self._held >= self._limit and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            first = not self._held
            self._items.append(item)
            if isinstance(item, bytes):
                self._held += len(item)
            else:
                self._marks += 1
            if first or self._marks or self._held >= _BATCH:  # else the consumer sleeps on
                self._cond.notify_all()
            return True

    def _own(self, sock: socket.socket) -> socket.socket:
        """Make ``sock`` the one ``close()`` shuts down (or close it, if that already ran)."""
        with self._cond:
            if self._closed:
                sock.close()
                raise TransientError("the transfer was closed")
            self._sock = sock
        return sock

    def _run(self) -> None:
        try:
            stream = _Stream(self._connect())
            for chunk in self._sync(stream):
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:  # raised to the consumer, on its thread
            self._put(exc)
        finally:
            with self._cond:
                if self._sock is not None:
                    self._sock.close()

    def _connect(self) -> socket.socket:
        """A connection opened as redis-py would open it (TLS for rediss://)."""
        ep = self.endpoint
        sock = self._own(socket.create_connection((ep.host, ep.port), timeout=CONNECT_TIMEOUT_S))
        if ep.tls:
            import ssl  # 10 ms of import, for TLS URLs only

            ctx = ssl.create_default_context(cafile=ep.ssl_ca_certs)
            if (ep.ssl_cert_reqs or "required").lower() in ("none", "0"):
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if ep.ssl_certfile:
                ctx.load_cert_chain(ep.ssl_certfile, ep.ssl_keyfile)
            tls = ctx.wrap_socket(sock, server_hostname=ep.host, do_handshake_on_connect=False)
            sock = self._own(tls)
            tls.do_handshake()
        sock.settimeout(READ_TIMEOUT_S)
        return sock

    def _sync(self, stream: _Stream) -> Iterator[bytes]:
        """The commands up to SYNC (puts Started), then the RDB's bytes."""
        ep, sock = self.endpoint, stream.sock
        auth: tuple[str, ...] = ()
        if ep.password:
            auth = ("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password)
        sock.sendall(
            (_command(*auth) if auth else b"")
            + _command("INFO", "keyspace")
            + _command("REPLCONF", "capa", "eof")
            + _command("REPLCONF", "rdb-only", "1")
        )
        if auth and not (reply := stream.line()).startswith(b"+"):
            raise PermanentError(
                f"cannot authenticate to {ep}: {reply.decode(errors='replace')}"
                " (check the user and password)"
            )
        info = stream.line()
        if not info.startswith(b"$"):
            raise PermanentError(f"cannot snapshot {ep}: INFO: {info.decode(errors='replace')}")
        keys, expiring = _keyspace(b"".join(stream.exactly(int(info[1:]) + 2)).decode())
        stream.line()  # +OK (an old server answers -ERR to capa eof: then $<len> comes)
        stream.line()  # +OK, or -ERR from servers before 7.0 (they send the stream after)
        sent_at = self._now()
        sock.sendall(_command("SYNC"))
        header = b""
        while not header:  # newlines are keep-alives while the master prepares
            header = stream.line()
        if not header.startswith(b"$"):
            hint = " (an ACL user needs +sync +replconf +info)" if b"NOPERM" in header else ""
            raise PermanentError(
                f"cannot snapshot {ep}: the server refused SYNC: "
                f"{header.decode(errors='replace')[:200]}{hint}"
            )
        diskless = header.startswith(b"$EOF:")
        mode = "diskless" if diskless else "disk"
        if not self._put(Started(keys, expiring, sent_at, mode)):
            return
        if diskless:
            yield from stream.until(header[5 : 5 + _MARK_LEN])
        else:
            yield from stream.exactly(int(header[1:]))


def _keyspace(info: str) -> tuple[dict[str, int], dict[str, int]]:
    """Keys and keys with a TTL per db, from INFO's keyspace lines (``db0:keys=3,expires=1,…``)."""
    keys, expiring = {}, {}
    for line in info.splitlines():
        name, _, values = line.partition(":")
        if name.startswith("db") and name[2:].isdigit():
            fields = dict(v.partition("=")[::2] for v in values.split(","))
            keys[name] = int(fields.get("keys") or 0)
            expiring[name] = int(fields.get("expires") or 0)
    return keys, expiring


# ---- the protocol ------------------------------------------------------------------------------


def _command(*args: str | bytes) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        parts += [f"${len(b)}\r\n".encode(), b, b"\r\n"]
    return b"".join(parts)


class _Stream:
    """Lines and raw bytes from a socket, with one read-ahead buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _recv(self) -> bytes:
        data = self.sock.recv(_RECV)
        if not data:
            raise TransientError("Redis closed the connection during the transfer")
        return data

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            self.buf += self._recv()
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def exactly(self, n: int) -> Iterator[bytes]:
        """The next ``n`` bytes, in chunks."""
        while n > 0:
            data = self.buf or self._recv()
            self.buf = b""
            if len(data) > n:
                data, self.buf = data[:n], data[n:]
            n -= len(data)
            yield data

    def until(self, mark: bytes) -> Iterator[bytes]:
        """Every byte up to ``mark`` (consumed, not yielded)."""
        tail = b""
        while True:
            data = tail + (self.buf or self._recv())
            self.buf = b""
            at = data.find(mark)
            if at >= 0:
                if at:
                    yield data[:at]
                return
            cut = max(0, len(data) - len(mark))
            if cut:
                yield data[:cut]
            tail = data[cut:]


# ---- the transfer started by the entry point ---------------------------------------------------

_early: list[Transfer] = []  # at most one


def start_early(raw: str) -> None:
    """Start the transfer for the URL ``raw`` now. Silent: a URL that cannot be read starts
    nothing, and a transfer that fails is replaced by ``snapshot()``, which reports why."""
    discard_early()
    with contextlib.suppress(Exception):  # a head start at best: problems are the command's
        _early.append(Transfer(Endpoint.parse(raw.strip())))


def take_early(raw: str) -> Transfer | None:
    """The transfer ``start_early`` started, if it was for exactly ``raw``; any other is closed."""
    transfer = _early.pop() if _early else None
    if transfer is not None and transfer.endpoint.raw != raw:
        transfer.close()
        return None
    return transfer


def discard_early() -> None:
    """Close the transfer ``start_early`` started, if nothing took it over."""
    while _early:
        _early.pop().close()
