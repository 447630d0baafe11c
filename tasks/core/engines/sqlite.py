"""SQLite backups: an online copy through SQLite's backup API (the runbook's "SQLite copy").

The copy is consistent even while the application writes (the backup API restarts or locks as
needed). Restore follows the same safety rule as PostgreSQL: the file is rebuilt and verified
beside the target, then renamed over it in one step; the previous file (with its -wal/-shm) is
kept as ``<name>.pre_restore_<id>`` unless asked to drop it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from tasks.core.errors import ConfigError, IntegrityError, PermanentError

__all__ = [
    "SIDE_FILES",
    "count_rows",
    "integrity_check",
    "online_copy",
    "remove_with_side_files",
    "restore_lock",
    "sqlite_errors",
    "swap_in",
]

SIDE_FILES = ("-wal", "-shm", "-journal")


@contextlib.contextmanager
def sqlite_errors(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise PermanentError(f"cannot {what}: {exc}") from exc


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def online_copy(source: Path, dest: Path) -> str:
    """Copy the live database ``source`` to ``dest``; returns the SQLite library version."""
    if not source.is_file():
        raise ConfigError(f"SQLite database {source} does not exist")
    with (
        sqlite_errors(f"copy {source}"),
        contextlib.closing(_connect_ro(source)) as src,
        contextlib.closing(sqlite3.connect(dest)) as dst,
    ):
        src.backup(dst, pages=4096)
    os.chmod(dest, 0o600)
    return sqlite3.sqlite_version


def count_rows(path: Path) -> dict[str, int]:
    """Exact rows per user table."""
    with sqlite_errors(f"count rows in {path}"), contextlib.closing(_connect_ro(path)) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        quoted = {n: '"' + n.replace('"', '""') + '"' for n in names}
        return {
            n: int(conn.execute(f"SELECT count(*) FROM {quoted[n]}").fetchone()[0]) for n in names
        }


def integrity_check(path: Path) -> None:
    """``PRAGMA integrity_check``; raises IntegrityError with SQLite's first complaint."""
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(f"SQLite file is not readable: {exc}") from exc
    if rows != ["ok"]:
        raise IntegrityError(f"SQLite integrity_check failed: {rows[0]}")


def swap_in(restored: Path, target: Path, keep_as: Path) -> None:
    """Put ``restored`` in place of ``target``; the current file (with its -wal/-shm/-journal)
    ends up as ``keep_as``. The target path never stops existing: the current file is first
    hard-linked to ``keep_as``, its side files moved, then ``restored`` renamed over it."""
    if target.exists():
        keep_as.unlink(missing_ok=True)
        os.link(target, keep_as)
        for suffix in SIDE_FILES:
            side = Path(str(target) + suffix)
            if side.exists():  # left by a writer that did not close cleanly: belongs to the old
                os.replace(side, Path(str(keep_as) + suffix))
    os.replace(restored, target)


@contextlib.contextmanager
def restore_lock(target: Path) -> Iterator[None]:
    """Hold the restore lock of ``target`` for the block: an ``fcntl`` lock on a file next to
    it. A second restore of the same file raises PermanentError at once, having changed
    nothing; the kernel drops the lock when the process ends, however it ends."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f".{target.name}.restore-lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PermanentError(
                f"another restore of database {target} is running (it holds {lock}): nothing "
                "was changed; wait for it to finish, then check the result before restoring again"
            ) from None
        try:  # the holder before us may have removed the file: lock the one that is there
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # removed while still held: no leftover next to the target
        os.close(fd)


def remove_with_side_files(path: Path) -> None:
    for suffix in ("", *SIDE_FILES):
        Path(str(path) + suffix).unlink(missing_ok=True)
