"""Data offsets for pg_dump custom-format archives that were written through a pipe.

``pg_dump -Fc`` writes the table of contents (TOC) first. Writing to a file, it seeks back at
the end and fills in where each table's data block starts; writing to a pipe (as ``dr backup``
does, to stream) it cannot, and every entry says "position not set". ``pg_restore -j`` then
makes each worker scan the data blocks chunk by chunk (one chunk per row with ``-Z0``) to find
its table: on 5 M rows that scan costs as much as 20 % of the restore.

``DataOffsets`` watches the decompressed bytes go by on their way to the restore's temp file,
finds every block start, and ``patch()`` writes the offsets into the TOC in place (same field
sizes, so nothing moves): the file becomes what ``pg_dump -f`` would have written.

Finding a block start without walking every row: data of a ``COPY`` block is text, which never
contains a NUL byte, so the only run of five NUL bytes inside it is the block's end marker (a
zero-length chunk). A block therefore starts right after ``00 00 00 00 00`` followed by its own
header, block type and the dump id of the next entry, in TOC order. Large-object data is binary,
so offsets after a BLOBS block are left unset (``pg_restore`` scans for those, as before). Any
surprise (unknown archive version, a header that is not where expected) leaves the archive as it
was: offsets are an optimisation, never a condition of the restore.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataOffsets", "Toc", "TocEntry", "copy_into", "read_toc"]

_MAGIC = b"PGDMP"
_BLK_DATA, _BLK_BLOBS = 1, 3
_POS_NOT_SET, _POS_SET = 1, 2
_END = b"\x00" * 5  # WriteInt(0): sign byte 0, four zero bytes
_FORMAT_CUSTOM = 1
SECTION_NONE, SECTION_PRE_DATA, SECTION_DATA, SECTION_POST_DATA = 1, 2, 3, 4
_SPLIT_SCAN = 4096  # chunks at least this long (longer than any pattern) are scanned in place
_BARE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")  # what pg_dump's fmtId leaves unquoted


class _Short(Exception):
    """More bytes are needed to read the TOC."""


class _Unsupported(Exception):
    """Not an archive this module understands; leave it alone."""


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    copy: bool  # data is COPY text (no NUL bytes)
    offset_field: int  # file position of the entry's offset flag byte
    has_data: bool  # the flag says a data block exists (position set or not)
    section: int  # as pg_restore counts it: an entry without one takes its predecessor's
    deps: tuple[int, ...] = ()  # dump ids of the entries this one depends on
    name: str = ""  # schema.name as pg_restore --list shows it
    schema: str = ""
    tag: str = ""  # the object's own name (a table's name for its TABLE DATA)
    copy_into: tuple[str, str] | None = None  # (schema, table) its COPY statement loads


def copy_into(copy_stmt: str) -> tuple[str, str] | None:
    """The (schema, table) of pg_dump's ``COPY schema.table (cols) FROM stdin;``, identifiers
    unquoted (pg_dump quotes any name that is not lower-case ASCII); None if not of that form.
    It differs from the entry's own table under ``--load-via-partition-root``."""
    if not copy_stmt.startswith("COPY "):
        return None
    s, i, parts = copy_stmt, 5, []
    while True:
        if s.startswith('"', i):
            name, i = [], i + 1
            while (q := s.find('"', i)) >= 0 and s.startswith('""', q):
                name.append(s[i : q + 1])
                i = q + 2
            if q < 0:
                return None
            name.append(s[i:q])
            parts.append("".join(name))
            i = q + 1
        else:
            m = _BARE_IDENT.match(s, i)
            if m is None:
                return None
            parts.append(m.group())
            i = m.end()
        if not s.startswith(".", i):
            break
        i += 1
    if len(parts) != 2 or not s.startswith(" ", i):
        return None
    return parts[0], parts[1]


@dataclass(frozen=True)
class Toc:
    int_size: int
    off_size: int
    entries: tuple[TocEntry, ...]
    end: int  # position of the first byte after the TOC
    compressed: bool  # pg_dump compressed the data blocks itself (not ``-Z0``)


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0
        self.int_size = 4

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _Short
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def int(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if sign else value

    def str(self) -> str | None:
        n = self.int()
        return None if n < 0 else self.take(n).decode("utf-8", "replace")


def read_toc(buf: bytes) -> Toc:
    """Parse header and TOC of a custom-format archive from its first bytes.

    Raises ``_Short`` when ``buf`` ends inside the TOC, ``_Unsupported`` for anything but the
    archive versions 1.12 to 1.16 (pg_dump 11 to 17) of the custom format; a misread
    TOC shows up as a missing first block header, and then nothing is patched."""
    r = _Reader(buf)
    if r.take(5) != _MAGIC:
        raise _Unsupported("not a pg_dump archive")
    version = (r.byte(), r.byte(), r.byte())
    r.int_size, off_size, fmt = r.byte(), r.byte(), r.byte()
    if version[:2] < (1, 12) or version[:2] > (1, 16) or fmt != _FORMAT_CUSTOM:
        raise _Unsupported(f"archive version {version} format {fmt}")
    # 1.15+: the algorithm (0 none, then gzip, lz4, zstd); before: the level (-1: zlib default)
    compressed = (r.byte() if version[:2] >= (1, 15) else r.int()) != 0
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        r.int()
    for _ in range(3):  # database name, server version, pg_dump version
        r.str()
    entries = []
    section = SECTION_PRE_DATA  # pg_restore's "curSection" starts there
    for _ in range(r.int()):
        dump_id = r.int()
        r.int()  # had dumper
        r.str(), r.str()  # table oid, oid
        tag = r.str() or ""
        desc = r.str() or ""
        own_section = r.int()
        section = own_section if own_section != SECTION_NONE else section
        r.str(), r.str()  # definition, drop statement
        copy_stmt = r.str()
        namespace = r.str()
        r.str()  # tablespace
        if version[:2] >= (1, 14):
            r.str()  # table access method
        if version[:2] >= (1, 16):
            r.int()  # relkind
        r.str()  # owner
        r.str()  # "false" (with oids)
        deps = []
        while (dep := r.str()) is not None:  # dependencies (dump ids), ended by a NULL string
            if not dep.isdigit():
                raise _Unsupported(f"dependency {dep!r}")
            deps.append(int(dep))
        field_at = r.pos
        state = r.byte()
        r.take(off_size)
        has_data = state in (_POS_NOT_SET, _POS_SET)
        name = f"{namespace}.{tag}" if namespace else tag
        copy = bool(copy_stmt)
        into = copy_into(copy_stmt) if copy_stmt else None
        e = TocEntry(
            dump_id,
            desc,
            copy,
            field_at,
            has_data,
            section,
            tuple(deps),
            name,
            namespace or "",
            tag,
            into,
        )
        entries.append(e)
    return Toc(r.int_size, off_size, tuple(entries), r.pos, compressed)


class DataOffsets:
    """Feed it the archive's bytes in order (``feed``), then ``patch`` the written file.

    Memory: the TOC (kilobytes to a few megabytes) plus one pattern's length of overlap."""

    def __init__(self) -> None:
        self._head: bytearray | None = bytearray()  # bytes until the TOC has been read
        self._toc: Toc | None = None
        self._pending: list[TocEntry] = []  # data entries whose block start is still unknown
        self._found: dict[int, int] = {}  # dump id -> block start
        self._tail = b""  # last bytes of the previous chunk (a pattern may straddle chunks)
        self._pos = 0  # stream position of the next fed byte
        self._search_from = 0  # no block start can be found before this stream position
        self._done = False

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return
        if self._head is None:
            tail, start = self._tail, self._pos - len(self._tail)
            self._pos += len(chunk)
            if len(chunk) < _SPLIT_SCAN:
                self._scan(tail + chunk, start)
                return
            # a big chunk is not copied: first where a pattern may straddle the two, then it
            if tail:
                self._scan(tail + chunk[: len(tail)], start)
            self._scan(chunk, start + len(tail))
            return
        self._head += chunk
        self._pos += len(chunk)
        try:
            toc = read_toc(bytes(self._head))
        except _Short:
            return
        except _Unsupported:
            self._done = True
            return
        pending = [e for e in toc.entries if e.has_data]
        if not pending or toc.compressed:  # compressed blocks may hold any byte pattern
            self._done = True
            return
        first = self._header(pending[0], toc.int_size)
        if len(self._head) < toc.end + len(first):
            return
        head, self._head = bytes(self._head), None
        if head[toc.end : toc.end + len(first)] != first:
            self._done = True  # not laid out as expected: leave the archive alone
            return
        self._toc, self._pending = toc, pending
        self._accept(toc.end)  # the first data block starts right after the TOC
        self._scan(head, 0)

    @staticmethod
    def _header(e: TocEntry, int_size: int) -> bytes:
        kind = _BLK_BLOBS if e.desc == "BLOBS" else _BLK_DATA
        return bytes([kind, 0]) + e.dump_id.to_bytes(int_size, "little")

    def _accept(self, at: int) -> None:
        assert self._toc is not None
        e = self._pending.pop(0)
        self._found[e.dump_id] = at
        self._search_from = at + len(self._header(e, self._toc.int_size))
        # after binary (large-object) data, block starts can no longer be told from data
        self._done = not e.copy or not self._pending

    def _scan(self, buf: bytes, start: int) -> None:
        """Find block starts in ``buf``, whose first byte is at stream position ``start``."""
        assert self._toc is not None
        while not self._done:
            pattern = _END + self._header(self._pending[0], self._toc.int_size)
            at = buf.find(pattern, max(self._search_from - start, 0))
            if at < 0:
                self._tail = buf[-(len(pattern) - 1) :]
                return
            self._accept(start + at + len(_END))
        self._tail = b""

    @property
    def offsets(self) -> dict[int, int]:
        """Dump id -> position of its data block, for the blocks found so far."""
        return dict(self._found)

    @property
    def toc(self) -> Toc | None:
        """The archive's TOC once it has been read (None for an archive left alone)."""
        return self._toc

    def block_start(self, dump_id: int) -> int | None:
        return self._found.get(dump_id)

    def patch(self, path: Path) -> int:
        """Write the found offsets into the TOC of ``path``; returns how many were written."""
        if self._toc is None or not self._found:
            return 0
        fields = {e.dump_id: e.offset_field for e in self._toc.entries}
        fd = os.open(path, os.O_RDWR)
        try:
            for dump_id, at in self._found.items():
                value = bytes([_POS_SET]) + at.to_bytes(self._toc.off_size, "little")
                os.pwrite(fd, value, fields[dump_id])
        finally:
            os.close(fd)
        return len(self._found)
