"""Two-stage pipelines on threads: read ahead, or write behind, while the caller works.

A restore reads the stored stream (disk or S3) and hashes it, decompresses it, and writes the
result to a file that ``pg_restore`` then reads. Done one after the other, one core waits while
the other works. Python threads run these stages at the same time because each of them spends
its time in C code that releases the GIL: hashlib (buffers over 2 KiB), zstandard, and file and
socket I/O. ``prefetch`` moves the producing end of a loop to a thread, ``WriteBehind`` the
consuming end; both keep at most ``depth`` items in flight, so memory stays bounded and a slow
end holds the other back.

Errors keep their meaning: an exception raised by the source is raised to the consumer, in
order, after the items that came before it; an exception in the sink is raised by the next
``put`` or by ``close``. Leaving early (``break``, an exception) stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["WriteBehind", "prefetch"]

T = TypeVar("T")
DEPTH = 4
_ITEM, _END, _ERROR = range(3)
_POLL_S = 0.1


_Queue = queue.Queue[tuple[int, object]]


def _put(q: _Queue, item: tuple[int, object], stop: threading.Event) -> bool:
    """Put unless ``stop`` is set while waiting for room; says whether the item went in."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def prefetch(source: Iterable[T], depth: int = DEPTH) -> Generator[T, None, None]:
    """The items of ``source``, produced on a background thread up to ``depth`` ahead."""
    q: _Queue = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        it = iter(source)
        try:
            for item in it:
                if not _put(q, (_ITEM, item), stop):
                    return
            _put(q, (_END, None), stop)
        except BaseException as exc:  # handed to the consumer, raised there
            _put(q, (_ERROR, exc), stop)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="dr-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == _ITEM:
                yield value  # type: ignore[misc]
            elif kind == _ERROR:
                assert isinstance(value, BaseException)
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join()


class WriteBehind(Generic[T]):
    """Calls ``sink(item)`` for every ``put`` item, in order, on a background thread.

    Use as a context manager: leaving the block normally waits until every item went through
    the sink (and raises the sink's error, if any); leaving it with an exception stops the
    thread without waiting for the items still queued."""

    def __init__(self, sink: Callable[[T], None], depth: int = DEPTH) -> None:
        self._sink = sink
        self._q: _Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._consume, name="dr-write-behind", daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                kind, value = self._q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if kind == _END:
                return
            try:
                self._sink(value)  # type: ignore[arg-type]
            except BaseException as exc:  # raised by the next put() or close()
                self._error = exc
                self._stop.set()
                return

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item: T) -> None:
        self._raise()
        if not _put(self._q, (_ITEM, item), self._stop):
            self._raise()

    def close(self) -> None:
        """Wait until every item went through the sink; raise the sink's error."""
        if _put(self._q, (_END, None), self._stop):
            self._thread.join()
        self._raise()

    def abort(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
