"""A TCP relay on a free local port, the base of the tests' fault-injecting proxies (S3 resets,
S3 responses cut mid-body, a Redis snapshot held half-way)."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    """Accepts on 127.0.0.1:``port`` and hands every connection, with a fresh connection to
    ``upstream_port``, to ``relay(client, upstream)`` in a thread of its own. Subclasses set
    their own attributes before calling ``__init__``: connections may arrive right after it."""

    def __init__(self, upstream_port: int, backlog: int = 64) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(backlog)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        self.relay(client, upstream)

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def close_all(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()
