"""Where a streamed table's data may be cut into pieces (engines/pgstream.py): only ever at a
row's chunk, also when the length fields themselves hold a newline followed by a NUL."""

from __future__ import annotations

import subprocess

import pytest

from tasks.core.engines import pgstream
from tasks.core.engines.pgarchive import DataOffsets
from tasks.core.pgcluster import PgCluster
from tests.conftest import psql

# rows of 10 bytes of COPY text ("abcdefghi\n"): every chunk's length field is 0a 00 00 00,
# a newline followed by NULs: each one a false candidate the walk must reject
_SCHEMA = """
CREATE TABLE tens (v text);
INSERT INTO tens SELECT 'abcdefghi' FROM generate_series(1, 30000);
CREATE TABLE mixed (id int, note text);
INSERT INTO mixed SELECT g, repeat(chr(97 + g % 26), g % 300) FROM generate_series(1, 20000) g;
"""


def _chunks(data: bytes, start: int, int_size: int) -> tuple[set[int], int]:
    """Every chunk start of the data block at ``start`` (the truth), and the end marker's."""
    at, found = start + 2 + int_size, set()
    while (n := int.from_bytes(data[at + 1 : at + 1 + int_size], "little")) != 0:
        found.add(at)
        at += 1 + int_size + n
    return found, at


@pytest.fixture
def archive(pg: PgCluster, dbname: str) -> bytes:
    psql(pg.url_for(dbname), _SCHEMA)
    return subprocess.run(
        ["pg_dump", "-Fc", "-Z0", pg.url_for(dbname)], check=True, capture_output=True
    ).stdout


@pytest.mark.parametrize("table", ["tens", "mixed"])
def test_every_cut_is_at_a_row_and_none_in_a_length_field(archive: bytes, table: str) -> None:
    finder = DataOffsets()
    finder.feed(archive)
    toc = finder.toc
    assert toc is not None
    e = next(e for e in toc.entries if e.desc == "TABLE DATA" and e.name == f"public.{table}")
    start = finder.block_start(e.dump_id)
    assert start is not None
    truth, end_marker = _chunks(archive, start, toc.int_size)
    cuts = []
    block_end = end_marker + 1 + toc.int_size  # as StreamedRestore, never look past it
    for at in range(start, end_marker, 97):  # from every odd position in the block
        found = pgstream._boundary(archive[at : min(at + 4096, block_end)], toc.int_size)
        if found is not None:
            cuts.append(at + found)
    assert cuts  # the blocks are cut somewhere
    assert set(cuts) <= truth
    assert all(c < end_marker for c in cuts)  # never at the end marker itself
