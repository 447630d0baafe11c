"""Reading Redis RDB files without a Redis server: structure, CRC64, keys per db, DUMP payloads.

An RDB file is ``REDIS`` + 4 ASCII digits (the RDB version), then opcodes (AUX, SELECTDB,
RESIZEDB, EXPIRETIME(_MS), FREQ, IDLE, FUNCTION2, MODULE_AUX, SLOT_INFO) and key/value pairs, then
the EOF opcode and (version >= 5) the CRC64 of everything before it, little endian. A CRC of 0
means the server ran with ``rdbchecksum no``: the file is then only checked for structure.

``read_rdb`` walks the file once, in bounded memory (one value at a time), and hands every key
with its expiry and its value's bytes exactly as stored (type byte + encoding) to ``on_key``.
Those bytes + the 2-byte RDB version + a CRC64 are a ``DUMP`` payload, which ``RESTORE`` accepts:
that is how ``dr redis restore --mode keys`` replays a snapshot into any reachable server.

The CRC is Redis's crc64 (Jones polynomial, reflected, as ``src/crc64.c``), computed by
anycrc's C code (``CRC64-REDIS``; the pure-Python table it replaced ran at 11 MB/s, docs/redis.md).
Errors are IntegrityError.
"""

from __future__ import annotations

import contextlib
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import anycrc

from tasks.core.errors import IntegrityError

__all__ = ["MAX_RDB_VERSION", "RdbSummary", "crc64", "dump_payload", "read_header", "read_rdb"]

MAX_RDB_VERSION = 12  # Redis 7.4 / 8.x; newer files are refused rather than misread
_CRC64 = anycrc.Model("CRC64-REDIS")  # Jones polynomial 0xad93d23594c935a9, reflected


def crc64(crc: int, data: bytes | bytearray | memoryview) -> int:
    """Redis's ``crc64(crc, data, len)``: start with 0; ``crc64(0, b"123456789")`` is
    0xe9c6d914c4b8d9ca."""
    return int(_CRC64.calc(data, crc)) if len(data) else crc


def dump_payload(value: bytes, rdb_version: int) -> bytes:
    """The ``DUMP`` serialization of a value stored as ``value`` (type byte + RDB encoding)."""
    body = value + struct.pack("<H", rdb_version)
    return body + struct.pack("<Q", crc64(0, body))


# opcodes
_FUNCTION_PRE_GA, _FUNCTION2, _MODULE_AUX, _IDLE, _FREQ = 246, 245, 247, 248, 249
_AUX, _RESIZEDB, _EXPIRETIME_MS, _EXPIRETIME, _SELECTDB, _EOF = 250, 251, 252, 253, 254, 255
_SLOT_INFO = 244
# value types whose whole encoding is one string (ziplist, listpack, intset, zipmap blobs)
_BLOB_TYPES = frozenset({0, 9, 10, 11, 12, 13, 16, 17, 20})
_TYPE_NAMES = {
    6: "module (pre-GA format)",
    22: "hash with field expiry (pre-GA)",
    23: "hash with field expiry (pre-GA)",
    24: "hash with field expiry (Redis 7.4+)",
    25: "hash with field expiry (Redis 7.4+)",
}


@dataclass
class RdbSummary:
    """What one pass over an RDB file found."""

    rdb_version: int
    aux: dict[str, str] = field(default_factory=dict)  # redis-ver, redis-bits, ctime, ...
    keys: dict[int, int] = field(default_factory=dict)  # db -> keys
    expiring: dict[int, int] = field(default_factory=dict)  # db -> keys with a TTL
    functions: int = 0  # function libraries (Redis 7+)
    checksum: str = "none"  # "ok", or "none" when written with rdbchecksum no
    _expiries: dict[int, array[int]] = field(default_factory=dict, repr=False)

    def alive(self, db: int, at_ms: int) -> int:
        """Keys of ``db`` that have not expired at ``at_ms`` (Unix ms): what a server that
        loads this file at that instant keeps (a master drops expired keys while loading)."""
        exp = self._expiries.get(db)
        gone = 0 if exp is None else bisect_right(exp, at_ms)
        return self.keys.get(db, 0) - gone

    def counts(self) -> dict[str, int]:
        """Keys per db as manifests record them: ``{"db0": n, ...}``."""
        return {f"db{db}": n for db, n in sorted(self.keys.items())}


class _Reader:
    """Bytes from an iterator of chunks, with the CRC64 of everything consumed so far."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buf = b""
        self._pos = 0
        self._crc = 0
        self.offset = 0  # bytes consumed from the file
        self._mark: int | None = None  # buffer position that must be kept (a value in progress)

    def _fill(self, n: int) -> None:
        keep = self._pos if self._mark is None else self._mark
        self._crc = crc64(self._crc, memoryview(self._buf)[:keep])
        parts = [self._buf[keep:]]
        have = len(parts[0])
        for chunk in self._chunks:
            parts.append(chunk)
            have += len(chunk)
            if have >= (self._pos - keep) + n:
                break
        self._buf = b"".join(parts)
        self._pos -= keep
        if self._mark is not None:
            self._mark = 0
        if len(self._buf) - self._pos < n:
            raise IntegrityError(
                f"RDB file ends early at byte {self.offset + len(self._buf) - self._pos} "
                "(truncated)"
            )

    def read(self, n: int) -> bytes:
        if len(self._buf) - self._pos < n:
            self._fill(n)
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        self.offset += n
        return out

    def byte(self) -> int:
        if self._pos >= len(self._buf):
            self._fill(1)
        b = self._buf[self._pos]
        self._pos += 1
        self.offset += 1
        return b

    def begin_value(self) -> None:
        self._mark = self._pos

    def end_value(self) -> bytes:
        assert self._mark is not None
        out, self._mark = self._buf[self._mark : self._pos], None
        return out

    def crc(self) -> int:
        """CRC64 of every byte consumed so far."""
        return crc64(self._crc, memoryview(self._buf)[: self._pos])

    def at_end(self) -> bool:
        if self._pos < len(self._buf):
            return False
        for chunk in self._chunks:
            if chunk:
                self._buf, self._pos = self._buf[self._pos :] + chunk, 0
                return False
        return True

    def length(self) -> tuple[int, bool]:
        """An RDB length: (value, is_special_encoding)."""
        b = self.byte()
        kind = b >> 6
        if kind == 0:
            return b & 0x3F, False
        if kind == 1:
            return ((b & 0x3F) << 8) | self.byte(), False
        if kind == 3:
            return b & 0x3F, True
        if b == 0x80:
            return int(struct.unpack(">I", self.read(4))[0]), False
        if b == 0x81:
            return int(struct.unpack(">Q", self.read(8))[0]), False
        raise IntegrityError(f"RDB: bad length byte 0x{b:02x} at byte {self.offset - 1}")

    def plain_length(self) -> int:
        n, special = self.length()
        if special:
            raise IntegrityError(f"RDB: unexpected encoded length at byte {self.offset}")
        return n

    def string(self) -> bytes:
        n, special = self.length()
        if not special:
            return self.read(n)
        if n == 0:
            return str(struct.unpack("<b", self.read(1))[0]).encode()
        if n == 1:
            return str(struct.unpack("<h", self.read(2))[0]).encode()
        if n == 2:
            return str(struct.unpack("<i", self.read(4))[0]).encode()
        if n == 3:  # LZF: compressed length, uncompressed length, data (kept compressed)
            clen = self.plain_length()
            self.plain_length()
            return self.read(clen)
        raise IntegrityError(f"RDB: unknown string encoding {n} at byte {self.offset}")

    def skip_string(self) -> None:
        self.string()


def _skip_module_value(r: _Reader) -> None:
    """A module value in the typed (MODULE_2) format: opcode, value, ... until EOF (0)."""
    while True:
        op = r.plain_length()
        if op == 0:
            return
        if op in (1, 2):
            r.plain_length()
        elif op == 3:
            r.read(4)
        elif op == 4:
            r.read(8)
        elif op == 5:
            r.skip_string()
        else:
            raise IntegrityError(f"RDB: bad module opcode {op} at byte {r.offset}")


def _skip_value(r: _Reader, t: int) -> None:
    """Consume the encoding of one value of type ``t``."""
    if t in _BLOB_TYPES:
        r.skip_string()
    elif t in (1, 2):  # list, set: n strings
        for _ in range(r.plain_length()):
            r.skip_string()
    elif t == 3:  # zset: member, score as a string with a 1-byte length (253-255: nan/inf)
        for _ in range(r.plain_length()):
            r.skip_string()
            n = r.byte()
            if n < 253:
                r.read(n)
    elif t == 4:  # hash: field, value
        for _ in range(r.plain_length()):
            r.skip_string()
            r.skip_string()
    elif t == 5:  # zset: member, binary double
        for _ in range(r.plain_length()):
            r.skip_string()
            r.read(8)
    elif t == 14:  # quicklist of ziplists
        for _ in range(r.plain_length()):
            r.skip_string()
    elif t == 18:  # quicklist 2: container kind, node
        for _ in range(r.plain_length()):
            r.plain_length()
            r.skip_string()
    elif t in (15, 19, 21):
        _skip_stream(r, t)
    elif t == 7:
        r.plain_length()  # module id
        _skip_module_value(r)
    else:
        what = _TYPE_NAMES.get(t, "unknown")
        raise IntegrityError(
            f"RDB: value type {t} ({what}) at byte {r.offset - 1} is not supported "
            "(corrupted, or written by a newer Redis)"
        )


def _skip_stream(r: _Reader, t: int) -> None:
    for _ in range(r.plain_length()):  # listpacks: master id (16 bytes), listpack
        r.skip_string()
        r.skip_string()
    for _ in range(3):  # length, last id ms, last id seq
        r.plain_length()
    if t >= 19:  # first id, max deleted id, entries added
        for _ in range(5):
            r.plain_length()
    for _ in range(r.plain_length()):  # consumer groups
        r.skip_string()
        r.plain_length()
        r.plain_length()
        if t >= 19:
            r.plain_length()  # entries read
        for _ in range(r.plain_length()):  # group PEL: id, delivery time, delivery count
            r.read(16 + 8)
            r.plain_length()
        for _ in range(r.plain_length()):  # consumers
            r.skip_string()
            r.read(8)  # seen time
            if t >= 21:
                r.read(8)  # active time
            for _ in range(r.plain_length()):
                r.read(16)


def _version(r: _Reader) -> int:
    head = r.read(9)
    if head[:5] != b"REDIS" or not head[5:].isdigit():
        raise IntegrityError("not an RDB file (no REDIS magic at the start)")
    version = int(head[5:])
    if not 1 <= version <= MAX_RDB_VERSION:
        raise IntegrityError(
            f"RDB version {version} is not supported (1-{MAX_RDB_VERSION}): written by a newer "
            "Redis?"
        )
    return version


def read_header(head: bytes) -> tuple[int, dict[str, str]]:
    """The RDB version and the AUX fields (redis-ver, ctime, ...) from the first bytes of a
    file; fields cut off by the end of ``head`` are left out. IntegrityError if not an RDB."""
    r = _Reader([head])
    version = _version(r)
    aux: dict[str, str] = {}
    with contextlib.suppress(IntegrityError):
        while r.byte() == _AUX:
            k, v = r.string(), r.string()
            aux[k.decode(errors="replace")] = v.decode(errors="replace")
    return version, aux


KeyHandler = Callable[[int, bytes, int | None, bytes], None]


def read_rdb(chunks: Iterable[bytes], on_key: KeyHandler | None = None) -> RdbSummary:
    """Walk an RDB file given as chunks; ``on_key(db, key, expire_ms, value)`` is called for
    every key (``value`` as stored: type byte + encoding). Raises IntegrityError on a bad
    header, an unknown opcode or type, a truncated file, bytes after the end, or a CRC64 that
    does not match."""
    r = _Reader(chunks)
    version = _version(r)
    s = RdbSummary(version)
    expiries: dict[int, list[int]] = {}
    db, expire = 0, None
    while True:
        t = r.byte()
        if t == _EOF:
            break
        if t == _SELECTDB:
            db = r.plain_length()
        elif t == _RESIZEDB:
            r.plain_length()
            r.plain_length()
        elif t == _AUX:
            k, v = r.string(), r.string()
            s.aux[k.decode(errors="replace")] = v.decode(errors="replace")
        elif t == _EXPIRETIME_MS:
            expire = int(struct.unpack("<q", r.read(8))[0])
        elif t == _EXPIRETIME:
            expire = int(struct.unpack("<i", r.read(4))[0]) * 1000
        elif t == _FREQ:
            r.byte()
        elif t == _IDLE:
            r.plain_length()
        elif t == _FUNCTION2:
            r.skip_string()
            s.functions += 1
        elif t == _MODULE_AUX:
            r.plain_length()
            _skip_module_value(r)
        elif t == _SLOT_INFO:
            for _ in range(3):
                r.plain_length()
        elif t == _FUNCTION_PRE_GA:
            raise IntegrityError("RDB: pre-GA function format (Redis 7.0 RC) is not supported")
        else:
            key = r.string()
            r.begin_value()
            _skip_value(r, t)
            value = bytes([t]) + r.end_value()
            s.keys[db] = s.keys.get(db, 0) + 1
            if expire is not None:
                s.expiring[db] = s.expiring.get(db, 0) + 1
                expiries.setdefault(db, []).append(expire)
            if on_key is not None:
                on_key(db, key, expire, value)
            expire = None
    computed = r.crc()
    if version >= 5:
        (stored,) = struct.unpack("<Q", r.read(8))
        if stored == 0:
            s.checksum = "none"
        elif stored != computed:
            raise IntegrityError(
                f"RDB CRC64 mismatch: file says {stored:016x}, content gives {computed:016x} "
                "(corrupted)"
            )
        else:
            s.checksum = "ok"
    if not r.at_end():
        raise IntegrityError(f"RDB: unexpected bytes after the end marker at byte {r.offset}")
    s._expiries = {d: array("q", sorted(v)) for d, v in expiries.items()}
    return s
