"""Restore a pg_dump archive into the side database while it is still being fetched.

A classic restore fetches the whole archive (read, sha256, decompress, write the temp file)
and only then starts ``pg_restore -j``. On a quiet machine raw ``pg_restore`` of a zlib
archive takes about as long as of an uncompressed one, so every second of that fetch is a
second dr is slower than the raw tool. Here the loading starts during the fetch:

1. **pre-data** (tables, types, functions...) as soon as the archive's table of contents has
   gone by: ``pg_restore --section=pre-data`` reads just the header and TOC, through a pipe;
2. **big tables**: once a table's data block has grown past ``stream_min`` bytes in the temp
   file, a ``pg_restore -L <that entry> -f - | psql`` gets header + TOC + the block through a
   pipe, read from the temp file behind the writer (tailing it), at most ``jobs - 1`` at a
   time (the fetch keeps a core busy), at least one. With ``-Z0`` the blocks are COPY text, so
   the fetch finds where each starts and ends (pgarchive.DataOffsets) without parsing rows.
   psql prints the row count the server reports for the COPY (``copied``): the restore takes
   it as the table's verified count instead of scanning the biggest tables again with
   ``count(*)`` (the table was created empty by this restore and is loaded by that COPY
   alone: it is left out of every later pass);
3. when the fetch has finished *and its sha256 held*: the rest of the data section (small
   tables, sequences, large objects) and the post-data section (indexes, constraints,
   triggers, ACLs) from the finished file, in waves of ``pg_restore -j --use-list``: an entry
   waits while a table it depends on is still loading (``_rest``).

Nothing is switched before the whole archive checked out: the data loaded during the fetch
only goes to the side database, which is thrown away when the checksum fails (``abort``).
An archive this module cannot read (another format version, pg_dump's own compression)
is restored the classic way after the fetch.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tasks.core.engines.pgarchive import (
    SECTION_DATA,
    SECTION_POST_DATA,
    DataOffsets,
    Toc,
    TocEntry,
)
from tasks.core.engines.postgres import (
    PostgresEngine,
    psql_command,
    tool_failed,
    widen_pipe,
)
from tasks.core.errors import CommandFailed
from tasks.core.storage import CHUNK

__all__ = ["STREAM_MIN", "StreamedRestore"]

STREAM_MIN = 32 * 2**20  # a smaller table waits for the final -j pass: no process per table
_COPY_TAG = re.compile(rb"^COPY (\d+)$", re.MULTILINE)  # psql's line for a finished COPY


class StreamedRestore:
    """Observer of a fetch (``observe``) that loads ``dbname`` on the way; then ``finish``
    (the fetch checked out) or ``abort`` (it did not).

    ``partial``: the file the fetch writes (read behind the writer); ``ready``: blocks until
    the empty side database exists (raises if it could not be made); ``stage``: told what each
    step after the fetch does."""

    def __init__(
        self,
        eng: PostgresEngine,
        dbname: str,
        partial: Path,
        jobs: int,
        ready: Callable[[], object],
        stream_min: int | None = None,
        stage: Callable[[str], None] | None = None,
    ) -> None:
        self._eng, self._db, self._partial = eng, dbname, partial
        self._jobs, self._ready = max(jobs, 1), ready
        self._min = STREAM_MIN if stream_min is None else stream_min
        self._stage = stage or (lambda _: None)
        self.offsets = DataOffsets()
        self._cond = threading.Condition()
        self._written = 0  # bytes of the archive in the file so far
        self._complete = False  # the fetch has ended: nothing more will be written
        self._stopping = False
        self._fd: int | None = None
        self._toc: Toc | None = None
        self._env: dict[str, str] = {}
        self._candidates: list[TocEntry] = []  # table data not yet streamed nor left alone
        self._next_with_data: dict[int, int | None] = {}  # dump id -> next block's dump id
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._running = 0
        self._streamed: list[int] = []
        # (schema, table) -> rows the server reported for the COPY that loaded it
        self.copied: dict[tuple[str, str], int] = {}
        self._done_loads: list[int] = []
        self._errors: list[BaseException] = []
        self._pre_done = threading.Event()
        self._lists = Path(tempfile.mkdtemp(prefix="lists-", dir=partial.parent))

    # ---- during the fetch (the fetch's write-behind thread) ----------------------------------

    def observe(self, chunk: bytes) -> None:
        """The fetch wrote (and flushed) ``chunk`` to the file."""
        self.offsets.feed(chunk)
        with self._cond:
            self._written += len(chunk)
            self._cond.notify_all()
        if self._toc is None:
            toc = self.offsets.toc
            if toc is None:
                return
            self._begin(toc)
        self._schedule()

    @property
    def touched(self) -> bool:
        """Whether anything may have been written to the database."""
        return self._toc is not None

    @property
    def streamed(self) -> list[str]:
        """The tables whose data was loaded during the fetch (schema.name)."""
        assert self._toc is not None or not self._streamed
        names = {e.dump_id: e.name for e in self._toc.entries} if self._toc else {}
        return [names[i] for i in self._streamed]

    def _begin(self, toc: Toc) -> None:
        self._toc = toc
        self._fd = os.open(self._partial, os.O_RDONLY)
        with_data = [e for e in toc.entries if e.has_data]
        for e, nxt in zip(with_data, [*with_data[1:], None], strict=True):
            self._next_with_data[e.dump_id] = nxt.dump_id if nxt else None
        self._candidates = [e for e in with_data if e.desc == "TABLE DATA" and e.copy]
        self._start(self._pre_data)

    def _schedule(self) -> None:
        with self._cond:
            if self._complete or self._stopping:
                return
            for e in list(self._candidates):
                start = self.offsets.block_start(e.dump_id)
                if start is None:
                    break  # blocks are found in order: the later ones are not known either
                end = self._end_of(e)
                size = (end if end is not None else self._written) - start
                if size >= self._min and self._running < max(self._jobs - 1, 1):
                    self._candidates.remove(e)
                    self._streamed.append(e.dump_id)
                    self._running += 1
                    self._start(self._load, e, start)
                elif end is not None and size < self._min:
                    self._candidates.remove(e)  # small: the final -j pass loads it

    def _end_of(self, e: TocEntry) -> int | None:
        nxt = self._next_with_data[e.dump_id]
        return None if nxt is None else self.offsets.block_start(nxt)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=self._guarded, args=(target, *args), daemon=True)
        t.name = f"dr-load-{len(self._threads)}"
        self._threads.append(t)
        t.start()

    def _guarded(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        except BaseException as exc:  # handed to finish(), which raises it
            with self._cond:
                self._errors.append(exc)

    def _pre_data(self) -> None:
        try:
            self._ready()
            if self._stopping:
                return  # the copy failed before the side database was even ready
            self._env = self._eng.restore_env(self._db)
            assert self._toc is not None
            assert self._fd is not None
            head = os.pread(self._fd, self._toc.end, 0)
            self._eng.run_pg_restore(self._db, self._env, [], section="pre-data", stdin=head)
        finally:
            self._pre_done.set()

    def _load(self, e: TocEntry, start: int) -> None:
        """``pg_restore -L <e>`` fed header + TOC + e's block, read behind the writer."""
        try:
            self._pre_done.wait()
            with self._cond:
                if self._errors or self._stopping:
                    return  # pre-data failed (reported) or the restore was abandoned
            self._pipe(e, start)
        finally:
            with self._cond:
                self._running -= 1
                self._done_loads.append(e.dump_id)
                self._cond.notify_all()
            self._schedule()  # a slot is free

    def _pipe(self, e: TocEntry, start: int) -> None:
        """``pg_restore -L <e> -f -`` turns header + TOC + e's block, read behind the writer,
        into its script (``COPY ... FROM stdin`` and the rows); ``psql`` runs it. pg_restore
        connected itself would send the same statements, but psql also prints the row count
        the server reports for the ``COPY`` (its command tag): that count, of a table this
        restore created empty, is the table's verified count (``copied``), so the biggest
        tables need no ``count(*)`` scan after the restore."""
        assert self._toc is not None
        assert self._fd is not None
        listed = self._lists / f"{e.dump_id}.list"
        listed.write_text(f"{e.dump_id}\n", encoding="ascii")
        left_early, pos = False, start
        with (
            tempfile.TemporaryFile(dir=self._lists) as err,
            tempfile.TemporaryFile(dir=self._lists) as sql_err,
            tempfile.TemporaryFile(dir=self._lists) as out,
        ):
            script_r, script_w = os.pipe()
            try:
                widen_pipe(script_w)
                proc = subprocess.Popen(
                    ["pg_restore", "--exit-on-error", "--file=-", f"--use-list={listed}"],
                    stdin=subprocess.PIPE,
                    stdout=script_w,
                    stderr=err,
                    env=self._env,
                )
                with self._cond:
                    self._procs.append(proc)
                runner = subprocess.Popen(
                    psql_command(self._db),
                    stdin=script_r,
                    stdout=out,
                    stderr=sql_err,
                    env=self._env,
                )
                with self._cond:
                    self._procs.append(runner)
            finally:
                os.close(script_r)
                os.close(script_w)
            assert proc.stdin is not None
            try:
                proc.stdin.write(os.pread(self._fd, self._toc.end, 0))
                proc.stdin.flush()
                pipe = proc.stdin.fileno()
                widen_pipe(pipe)
                while (upto := self._readable(e, pos)) is not None:
                    # from the page cache to the pipe in the kernel: no copy through Python
                    pos += os.sendfile(pipe, self._fd, pos, min(upto - pos, CHUNK))
            except BrokenPipeError:
                # pg_restore left before the end of what it was sent: it failed (its exit code
                # says so), or the block's end was not known and it stopped at its end marker
                nxt = self._next_with_data[e.dump_id]
                left_early = nxt is None or self.offsets.block_start(nxt) is not None
            finally:
                with contextlib.suppress(BrokenPipeError, OSError):
                    proc.stdin.close()
                proc.wait()
                runner.wait()
            if self._stopping:
                return
            what = f"data of {e.name}"
            if runner.returncode != 0:  # the server's reason; pg_restore then lost its reader
                sql_err.seek(0)
                raise tool_failed("psql", self._db, what, runner.returncode, sql_err.read())
            if proc.returncode != 0:
                err.seek(0)
                raise tool_failed("pg_restore", self._db, what, proc.returncode, err.read())
            if left_early:  # it read less than its block, and said nothing: never a success
                raise CommandFailed(
                    f"pg_restore ({what}) into {self._db} stopped reading before the "
                    f"end of its data, at byte {pos:,} of the archive"
                )
            out.seek(0)
            tags = _COPY_TAG.findall(out.read())
            if len(tags) != 1:
                raise CommandFailed(
                    f"psql ({what}) into {self._db} reported {len(tags)} COPY commands, not 1"
                )
            if e.copy_into == (e.schema, e.tag):  # not a load through a partition root
                with self._cond:
                    self.copied[e.copy_into] = int(tags[0])

    def _readable(self, e: TocEntry, pos: int) -> int | None:
        """How far the block can be read from ``pos`` now (waits for the writer); None at its
        end (or when the restore is abandoned)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                end = self._end_of(e)
                if end is None and self._complete:
                    end = self._written  # the last block runs to the end of the file
                if end is not None and pos >= end:
                    return None
                upto = end if end is not None else self._written
                if upto > pos:
                    return upto
                self._cond.wait()

    # ---- after the fetch ---------------------------------------------------------------------

    def finish(self, archive: Path) -> None:
        """The fetch wrote ``archive`` and its checksum held: load what is left."""
        with self._cond:
            self._complete = True
            self._cond.notify_all()
        try:
            if self._toc is None:  # an archive we cannot read ahead: the classic way
                self._ready()
                self._stage(f"restoring the whole archive (pg_restore -j{self._jobs})")
                self._eng.pg_restore(archive, self._db, self._jobs)
                return
            self.offsets.patch(archive)  # the -j runs below seek to each block, not scan
            self._pre_done.wait()
            self._raise_first()
            self._rest(self._toc, archive)
        except BaseException:
            self._kill()
            raise
        finally:
            self._close()

    def _rest(self, toc: Toc, archive: Path) -> None:
        """The data not streamed and the post-data section, in waves of ``pg_restore -j -L``.

        An entry waits while any table it depends on (through any chain of dependencies) is
        still being loaded: pg_restore, not seeing that table's data in its list, would not
        wait for it. So the indexes and constraints of the tables already in are built while
        the big ones still load, as in one ``pg_restore -j``; a materialized view is refreshed
        once every load is done."""
        by_id = {e.dump_id: e for e in toc.entries}
        reach: dict[int, frozenset[int]] = {}

        def tables_of(i: int) -> frozenset[int]:
            """The tables entry ``i`` depends on, directly or not (itself if it is one): a
            partition's table depends on its parent, a trigger or index on the parent."""
            if i not in reach:
                reach[i] = frozenset()  # a cycle (never in pg_dump's output) ends here
                e = by_id.get(i)
                found = {i} if e is not None and e.desc == "TABLE" else set()
                for dep in e.deps if e is not None else ():
                    found |= tables_of(dep)
                reach[i] = frozenset(found)
            return reach[i]

        streamed = set(self._streamed)
        pending = [
            e
            for e in toc.entries
            if (e.section == SECTION_DATA and e.dump_id not in streamed)
            or e.section == SECTION_POST_DATA
        ]
        wave, waiting_for = 0, frozenset[int]()
        while pending:
            with self._cond:
                while True:
                    if self._errors:
                        raise self._errors[0]
                    loading = streamed - set(self._done_loads)
                    busy = frozenset().union(*(tables_of(i) for i in loading))
                    ready = [
                        e
                        for e in pending
                        if not tables_of(e.dump_id) & busy
                        and not (loading and e.desc == "MATERIALIZED VIEW DATA")
                    ]
                    if ready:
                        break
                    if loading != waiting_for:
                        waiting_for = frozenset(loading)
                        self._stage(f"waiting for {_names(by_id, loading)} to finish loading")
                    self._cond.wait()  # until a load is done
                jobs = max(self._jobs - len(loading), 1)
            wave += 1
            also = f", while {_names(by_id, loading)} loads" if loading else ""
            self._stage(f"pass {wave}: {_summary(ready)} (pg_restore -j{jobs}{also})")
            listed = self._lists / f"wave{wave}.list"
            listed.write_text("".join(f"{e.dump_id}\n" for e in ready), encoding="ascii")
            args = [f"--jobs={jobs}", f"--use-list={listed}", str(archive)]
            self._eng.run_pg_restore(self._db, self._env, args, what=f"pass {wave} after the fetch")
            taken = {e.dump_id for e in ready}
            pending = [e for e in pending if e.dump_id not in taken]
        self._join()
        self._raise_first()

    def abort(self) -> None:
        """The fetch failed: stop every load and wait for it (the caller drops the database)."""
        with self._cond:
            self._complete = True
        self._kill()
        self._close()

    def _kill(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def _join(self) -> None:
        for t in list(self._threads):
            t.join()

    def _raise_first(self) -> None:
        with self._cond:
            if self._errors:
                raise self._errors[0]

    def _close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for f in self._lists.iterdir():
            f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._lists.rmdir()


def _names(by_id: dict[int, TocEntry], ids: set[int] | frozenset[int]) -> str:
    return ", ".join(sorted(by_id[i].name for i in ids))


def _summary(entries: list[TocEntry]) -> str:
    """``3 TABLE DATA, 2 INDEX, 1 CONSTRAINT``: what a pass restores, most frequent first."""
    kinds = Counter(e.desc for e in entries)
    return ", ".join(f"{n} {desc}" for desc, n in kinds.most_common())
