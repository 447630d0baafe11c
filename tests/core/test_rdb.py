"""The RDB reader: CRC64, structure, keys per db, and the ways a file can be damaged."""

from __future__ import annotations

import io
import random
import struct

import pytest

from tasks.core import rdb
from tasks.core.engines.redis import parse_redis_url, snapshot
from tasks.core.errors import IntegrityError
from tests.redis_server import RedisProcess


def _rdb_of(server: RedisProcess) -> bytes:
    buf = io.BytesIO()
    snapshot(parse_redis_url(server.url), buf.write)
    return buf.getvalue()


@pytest.fixture
def sample(redis_server: RedisProcess) -> bytes:
    """An RDB with every common value type, two dbs, integers and a key with a TTL."""
    c = redis_server.client()
    c.set("s", "hello")
    c.set("n", 12345)
    c.set("ttl", "v", ex=300)
    c.rpush("l", *range(200))
    c.sadd("set", "a", "b", "c")
    c.sadd("ints", 1, 2, 3)
    c.zadd("z", {"m": 1.5, "n": -2})
    c.hset("h", mapping={f"f{i}": "x" * i for i in range(300)})  # large: a real hash table
    c.xadd("stream", {"f": "v"})
    c.xgroup_create("stream", "g", id="0")
    c.xreadgroup("g", "consumer", {"stream": ">"})
    c.execute_command(
        "FUNCTION", "LOAD", "#!lua name=lib\nredis.register_function('f', function() return 1 end)"
    )
    redis_server.client(5).set("other", "db")
    return _rdb_of(redis_server)


def test_crc64_is_redis_jones_crc() -> None:
    # the check value of Redis's src/crc64.c test
    assert rdb.crc64(0, b"123456789") == 0xE9C6D914C4B8D9CA
    assert rdb.crc64(rdb.crc64(0, b"1234"), b"56789") == 0xE9C6D914C4B8D9CA


def test_crc64_matches_a_bitwise_reference_on_random_data() -> None:
    """The C implementation against the definition (reflected Jones polynomial, bit by bit),
    over chunk boundaries as read_rdb feeds it."""
    data = random.Random(7).randbytes(5000)

    def reference(buf: bytes) -> int:
        crc = 0
        for byte in buf:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0x95AC9329AC4BC9B5 if crc & 1 else crc >> 1
        return crc

    chained = 0
    for at in range(0, len(data), 777):
        chained = rdb.crc64(chained, memoryview(data)[at : at + 777])
    assert rdb.crc64(0, data) == chained == reference(data)


def test_counts_keys_per_db_types_ttls_and_functions(sample: bytes) -> None:
    seen: list[tuple[int, bytes, int | None, int]] = []
    summary = rdb.read_rdb(
        [sample[i : i + 7] for i in range(0, len(sample), 7)],  # tiny chunks: every boundary
        lambda db, key, exp, value: seen.append((db, key, exp, value[0])),
    )
    assert summary.keys == {0: 9, 5: 1}
    assert summary.expiring == {0: 1}
    assert summary.counts() == {"db0": 9, "db5": 1}
    assert summary.checksum == "ok"
    assert summary.functions == 1
    assert summary.aux["redis-ver"]
    assert {k for _, k, _, _ in seen} >= {b"s", b"l", b"h", b"stream", b"other"}
    ttl = next(exp for _, k, exp, _ in seen if k == b"ttl")
    assert ttl is not None
    assert summary.alive(0, ttl - 1) == 9  # the key with a TTL is still there before it
    assert summary.alive(0, ttl) == 8


def test_header_gives_version_and_aux(sample: bytes) -> None:
    version, aux = rdb.read_header(sample[:200])
    assert version == int(sample[5:9])
    assert "ctime" in aux


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_a_flipped_byte_is_caught(sample: bytes, where: float) -> None:
    damaged = bytearray(sample)
    at = int(len(damaged) * where)
    damaged[at] ^= 0x01
    with pytest.raises(IntegrityError):
        rdb.read_rdb([bytes(damaged)])


def test_a_flipped_byte_in_a_value_is_caught_by_the_crc(sample: bytes) -> None:
    at = sample.index(b"hello")
    damaged = sample[:at] + b"jello" + sample[at + 5 :]
    with pytest.raises(IntegrityError, match="CRC64 mismatch"):
        rdb.read_rdb([damaged])


@pytest.mark.parametrize("cut", [5, 100, -9, -1])
def test_a_truncated_file_is_caught(sample: bytes, cut: int) -> None:
    with pytest.raises(IntegrityError):
        rdb.read_rdb([sample[:cut]])


def test_bytes_after_the_end_are_caught(sample: bytes) -> None:
    with pytest.raises(IntegrityError, match="after the end"):
        rdb.read_rdb([sample + b"x"])


def test_not_an_rdb_and_newer_versions_are_refused(sample: bytes) -> None:
    with pytest.raises(IntegrityError, match="not an RDB"):
        rdb.read_rdb([b"PGDMP" + sample[5:]])
    with pytest.raises(IntegrityError, match="version 99"):
        rdb.read_rdb([b"REDIS0099" + sample[9:]])


def test_a_file_without_checksum_is_read_for_structure(sample: bytes) -> None:
    unsummed = sample[:-8] + struct.pack("<Q", 0)  # rdbchecksum no writes 0
    assert rdb.read_rdb([unsummed]).checksum == "none"


def test_dump_payload_is_what_dump_returns(redis_server: RedisProcess) -> None:
    c = redis_server.client()
    c.hset("h", mapping={"a": "1", "b": "2"})
    raw = _rdb_of(redis_server)
    values: dict[bytes, bytes] = {}
    summary = rdb.read_rdb([raw], lambda db, key, exp, value: values.update({key: value}))
    assert rdb.dump_payload(values[b"h"], summary.rdb_version) == c.dump("h")
