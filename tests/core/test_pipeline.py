"""The read-ahead and write-behind threads of a restore's fetch: same items, same errors, in
the same order as without threads; bounded memory; no thread left behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tasks.core.pipeline import WriteBehind, prefetch


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("dr-")}


def test_prefetch_yields_every_item_in_order_and_leaves_no_thread() -> None:
    assert list(prefetch(iter(range(1000)), depth=3)) == list(range(1000))
    assert _threads() == set()


def test_prefetch_raises_the_source_error_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise FileNotFoundError("gone")

    got: list[int] = []

    def consume() -> None:
        for item in prefetch(source()):
            got.append(item)

    with pytest.raises(FileNotFoundError, match="gone"):
        consume()
    assert got == [1, 2]


def test_prefetch_reads_at_most_depth_ahead_and_stops_when_the_consumer_leaves() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    it = prefetch(source(), depth=4)
    assert next(it) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 6 and time.monotonic() < deadline:  # 1 taken + 4 queued + 1 waiting
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(produced) <= 6  # bounded: the producer waits for room
    it.close()  # the consumer leaves (a break, an exception)
    assert closed.wait(5)  # the source was closed on its thread
    assert _threads() == set()


def test_write_behind_passes_every_item_to_the_sink_in_order() -> None:
    seen: list[int] = []
    with WriteBehind(seen.append, depth=2) as behind:
        for i in range(500):
            behind.put(i)
    assert seen == list(range(500))
    assert _threads() == set()


def test_write_behind_raises_the_sink_error_and_stops_taking_items() -> None:
    seen: list[int] = []

    def sink(item: int) -> None:
        if item == 3:
            raise OSError(28, "No space left on device")
        seen.append(item)

    def write_all() -> None:
        with WriteBehind(sink, depth=2) as behind:
            for i in range(10_000):
                behind.put(i)

    with pytest.raises(OSError, match="No space left"):
        write_all()
    assert seen == [0, 1, 2]  # nothing after the failure reached the sink
    assert _threads() == set()


def test_write_behind_stops_without_waiting_when_the_producer_fails() -> None:
    seen: list[int] = []
    release = threading.Event()

    def sink(item: int) -> None:
        release.wait(5)
        seen.append(item)

    def fail_half_way() -> None:
        with WriteBehind(sink, depth=100) as behind:
            for i in range(50):
                behind.put(i)
            threading.Timer(0.2, release.set).start()  # the sink finishes item 0 after abort
            raise ValueError("corrupt input")

    with pytest.raises(ValueError, match="corrupt"):
        fail_half_way()
    assert seen == [0]  # the queued rest was dropped, not written
    assert _threads() == set()
