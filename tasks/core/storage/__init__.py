"""Where backups live: one small protocol, implemented for a local directory, S3 and memory.

Keys are relative, ``/``-separated paths (``<backup-id>/manifest.json``); every location holds the
same keys under its own root. All implementations pass ``tests/core/storage/test_contract.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["ObjectInfo", "Storage", "Writer"]

CHUNK = 1 << 20  # 1 MiB: the unit every stream is read and written in


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing tells about one stored object."""

    key: str
    size: int
    modified: datetime  # UTC


class Writer(Protocol):
    """A stream being written to one key. Nothing is visible under the key before ``commit``."""

    def write(self, data: bytes) -> None:
        """Append ``data``; raises TransientError/PermanentError on storage failure."""

    def commit(self) -> ObjectInfo:
        """Make the object visible under its key, atomically, and return its info."""

    def abort(self) -> None:
        """Discard everything written; never raises; a no-op after commit."""


class Storage(Protocol):
    """A backup location."""

    @property
    def name(self) -> str:
        """Short kind of location for reports: ``local``, ``s3`` or ``memory``."""

    @property
    def url(self) -> str:
        """Where it is, for humans (``/srv/backups``, ``s3://bucket/prefix``); no secrets."""

    def open_writer(self, key: str) -> Writer:
        """Start writing ``key``; an existing object is replaced only at commit."""

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Write a small object in one call (manifests, reports)."""

    def get(self, key: str) -> Iterator[bytes]:
        """Stream the object in chunks; raises FileNotFoundError if absent."""

    def read(self, key: str) -> bytes:
        """The whole (small) object; raises FileNotFoundError if absent."""

    def stat(self, key: str) -> ObjectInfo | None:
        """Info for ``key``, or None if it does not exist."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
