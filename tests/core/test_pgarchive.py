"""Data offsets for pipe-written pg_dump archives: the patched file must say exactly what
``pg_dump -f`` (which can seek back) writes, and anything unexpected leaves the file alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.core.engines.pgarchive import DataOffsets, copy_into, read_toc
from tasks.core.pgcluster import PgCluster
from tests.conftest import psql

_SCHEMA = """
CREATE TABLE users (id int PRIMARY KEY, name text, note text);
INSERT INTO users SELECT g, 'ü' || g, repeat(md5(g::text), 3) FROM generate_series(1, 3000) g;
CREATE TABLE empty_one (a int);
CREATE TABLE "Mixed Case" (b bytea);
INSERT INTO "Mixed Case" SELECT decode(repeat('00', 64), 'hex') FROM generate_series(1, 500);
CREATE TABLE empty_two (a int);
CREATE TABLE wide (payload text);
INSERT INTO wide SELECT repeat('x', 200000) FROM generate_series(1, 5);
SELECT lo_from_bytea(0, decode(repeat('00', 4096), 'hex'));
SELECT lo_from_bytea(0, 'hello');
"""


def _fields(archive: bytes) -> dict[int, bytes]:
    toc = read_toc(archive)
    return {
        e.dump_id: archive[e.offset_field : e.offset_field + 1 + toc.off_size] for e in toc.entries
    }


@pytest.fixture
def archives(pg: PgCluster, dbname: str, tmp_path: Path) -> tuple[bytes, bytes]:
    """The same database dumped to a file (offsets set) and through a pipe (not set)."""
    url = pg.url_for(dbname)
    psql(url, _SCHEMA)
    seekable = tmp_path / "file.dump"
    subprocess.run(["pg_dump", "-Fc", "-Z0", "-f", str(seekable), url], check=True)
    piped = subprocess.run(["pg_dump", "-Fc", "-Z0", url], check=True, capture_output=True)
    return seekable.read_bytes(), piped.stdout


@pytest.mark.parametrize("chunk", [1, 7, 4096, 5000, 1 << 20])
def test_offsets_found_in_a_pipe_written_archive_match_pg_dump_f(
    archives: tuple[bytes, bytes], chunk: int, tmp_path: Path
) -> None:
    seekable, piped = archives
    assert _fields(seekable) != _fields(piped)  # the pipe archive really lacks them
    finder = DataOffsets()
    for i in range(0, len(piped), chunk):
        finder.feed(piped[i : i + chunk])
    out = tmp_path / "patched.dump"
    out.write_bytes(piped)
    data_entries = [e for e in read_toc(piped).entries if e.has_data]
    assert finder.patch(out) == len(data_entries) == 6  # 5 tables + large objects
    assert _fields(out.read_bytes()) == _fields(seekable)


def test_patched_archive_restores_in_parallel(
    archives: tuple[bytes, bytes], pg: PgCluster, dbname: str, tmp_path: Path
) -> None:
    _, piped = archives
    out = tmp_path / "patched.dump"
    out.write_bytes(piped)
    finder = DataOffsets()
    finder.feed(piped)
    finder.patch(out)
    target = f"{dbname}_copy"
    psql(pg.url, f'CREATE DATABASE "{target}"')
    subprocess.run(
        ["pg_restore", "--exit-on-error", "-j2", "-d", pg.url_for(target), str(out)],
        check=True,
        capture_output=True,
    )
    count = "SELECT count(*), sum(length(note)) FROM users"
    assert psql(pg.url_for(target), count) == psql(pg.url_for(dbname), count)
    assert psql(pg.url_for(target), "SELECT count(*) FROM pg_largeobject_metadata") == "2"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"not an archive at all" + b,
        lambda b: b[:200],  # ends inside the TOC
        lambda b: b[:5] + b"\x09" + b[6:],  # unknown archive version
        lambda b: b[: read_toc(b).end] + b"\x01" + b[read_toc(b).end + 2 :],  # no block there
    ],
    ids=["garbage", "truncated-toc", "unknown-version", "unexpected-layout"],
)
def test_anything_unexpected_leaves_the_archive_alone(
    archives: tuple[bytes, bytes], mangle: object, tmp_path: Path
) -> None:
    _, piped = archives
    data = mangle(piped)  # type: ignore[operator]
    finder = DataOffsets()
    finder.feed(data)
    out = tmp_path / "a.dump"
    out.write_bytes(data)
    assert finder.patch(out) == 0
    assert out.read_bytes() == data


def test_sections_and_names_are_read_as_pg_restore_reads_them(
    archives: tuple[bytes, bytes], tmp_path: Path
) -> None:
    """An entry without a section of its own (an ACL, a comment) belongs where pg_restore
    puts it: the streamed restore (pgstream.py) splits the archive by these sections."""
    _, piped = archives
    path = tmp_path / "a.dump"
    path.write_bytes(piped)
    toc = read_toc(piped)
    for number, section in enumerate(("pre-data", "data", "post-data"), start=2):
        listed = subprocess.run(
            ["pg_restore", "--list", f"--section={section}", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        ids = {int(ln.split(";")[0]) for ln in listed.splitlines() if ln and ln[0] != ";"}
        ours = {e.dump_id: e.desc for e in toc.entries if e.section == number}
        assert ids <= set(ours), section
        # left out of --list: settings applied per connection, and the database itself (that
        # one only with --create)
        skipped = {ours[i] for i in set(ours) - ids}
        assert skipped <= {"ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE"}
    names = {e.name for e in toc.entries if e.desc == "TABLE DATA"}
    assert names == {"public.users", "public.empty_one", "public.Mixed Case", "public.empty_two",
                     "public.wide"}  # fmt: skip
    users = next(e for e in toc.entries if e.desc == "TABLE DATA" and e.name == "public.users")
    table = next(e for e in toc.entries if e.desc == "TABLE" and e.name == "public.users")
    assert table.dump_id in users.deps
    assert not toc.compressed


def test_the_table_each_copy_loads_is_read_from_its_statement(
    pg: PgCluster, dbname: str, tmp_path: Path
) -> None:
    """The streamed restore takes the row count the server reports for a COPY as the count
    of the entry's own table: only when the COPY goes into that table, not, under
    ``--load-via-partition-root``, into the root that routes the rows elsewhere."""
    url = pg.url_for(dbname)
    psql(
        url,
        '''
        CREATE SCHEMA "Odd ""Schema""";
        CREATE TABLE "Odd ""Schema""".parts (k int, v text) PARTITION BY RANGE (k);
        CREATE TABLE "Odd ""Schema"""."Low.Part" PARTITION OF "Odd ""Schema""".parts
            FOR VALUES FROM (0) TO (10);
        CREATE TABLE "Odd ""Schema""".high PARTITION OF "Odd ""Schema""".parts
            FOR VALUES FROM (10) TO (20);
        INSERT INTO "Odd ""Schema""".parts SELECT g, 'v' FROM generate_series(0, 19) g;
        CREATE TABLE "Ünï" ("Col" int);
        CREATE TABLE nocols ();
        CREATE TABLE "select" (a int);
        ''',
    )

    def targets(*extra: str) -> dict[tuple[str, str], tuple[str, str] | None]:
        dump = ["pg_dump", "-Fc", "-Z0", *extra, url]
        toc = read_toc(subprocess.run(dump, check=True, capture_output=True).stdout)
        return {(e.schema, e.tag): e.copy_into for e in toc.entries if e.desc == "TABLE DATA"}

    own = targets()
    assert set(own) == {
        ('Odd "Schema"', "Low.Part"), ('Odd "Schema"', "high"), ("public", "Ünï"),
        ("public", "nocols"), ("public", "select"),
    }  # fmt: skip
    assert all(into == table for table, into in own.items())
    routed = targets("--load-via-partition-root")
    assert routed[('Odd "Schema"', "high")] == ('Odd "Schema"', "parts")
    assert routed[('Odd "Schema"', "Low.Part")] == ('Odd "Schema"', "parts")
    assert routed[("public", "select")] == ("public", "select")


@pytest.mark.parametrize(
    "statement",
    ["COPY x FROM stdin;", 'COPY "a.b (x) FROM stdin;', "COPY a.b.c (x) FROM stdin;", "SELECT 1"],
)
def test_a_copy_statement_of_another_form_names_no_table(statement: str) -> None:
    assert copy_into(statement) is None
