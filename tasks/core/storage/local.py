"""A local directory as a backup location.

Objects are written to a hidden temporary file in the target folder and renamed into place at
commit (atomic on POSIX), so a reader never sees a half-written object. Files are 0600, folders
0700: backups hold the whole database.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from tasks.core.errors import ConfigError, PermanentError
from tasks.core.storage import CHUNK, ObjectInfo

__all__ = ["LocalStorage"]

_TMP_PREFIX = ".tmp-"


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))


class _LocalWriter:
    def __init__(self, path: Path, key: str) -> None:
        self._path, self._key = path, key
        self._created_dir = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after commit/abort"
        try:
            self._file.write(data)
        except OSError as exc:
            raise PermanentError(f"cannot write {self._path}: {exc.strerror}") from exc

    def commit(self) -> ObjectInfo:
        assert self._file is not None, "commit after commit/abort"
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._path)
            _fsync_dir(self._path.parent)  # the rename itself must survive a power cut
        except OSError as exc:
            self.abort()
            raise PermanentError(f"cannot write {self._path}: {exc.strerror}") from exc
        self._file = None
        return _info(self._key, self._path.stat())

    def abort(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        self._tmp.unlink(missing_ok=True)
        if self._created_dir:  # a backup that failed before any commit leaves no empty folder
            with contextlib.suppress(OSError):
                self._path.parent.rmdir()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    name = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"backup dir {self.root} exists and is not a directory")

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key escapes the backup dir: {key!r}")
        return path

    def open_writer(self, key: str) -> _LocalWriter:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            return _LocalWriter(self._path(key), key)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ConfigError(
                    f"backup dir {self.root} is not writable: {exc.strerror}"
                ) from exc
            raise PermanentError(f"cannot write to backup dir {self.root}: {exc.strerror}") from exc

    def put(self, key: str, data: bytes) -> ObjectInfo:
        writer = self.open_writer(key)
        writer.write(data)
        return writer.commit()

    def get(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            return _info(key, self._path(key).stat())
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        found: list[ObjectInfo] = []
        # walk only below the deepest folder the prefix names ("b1/" -> root/b1)
        start = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        for dirpath, _dirs, files in os.walk(start):
            for fname in files:
                path = Path(dirpath, fname)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        found.append(_info(key, path.stat()))
                    except FileNotFoundError:
                        continue  # removed while we walked
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # remove now-empty parent folders up to the root, so deleted backups leave no trace
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break
