"""In-memory storage for tests and dry runs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from tasks.core.storage import CHUNK, ObjectInfo

__all__ = ["MemoryStorage"]


class _MemoryWriter:
    def __init__(self, store: MemoryStorage, key: str) -> None:
        self._store, self._key, self._parts = store, key, bytearray()

    def write(self, data: bytes) -> None:
        self._parts += data

    def commit(self) -> ObjectInfo:
        return self._store.put(self._key, bytes(self._parts))

    def abort(self) -> None:
        self._parts.clear()


class MemoryStorage:
    name = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, datetime]] = {}

    @property
    def url(self) -> str:
        return f"memory://{id(self):x}"

    def open_writer(self, key: str) -> _MemoryWriter:
        return _MemoryWriter(self, key)

    def put(self, key: str, data: bytes) -> ObjectInfo:
        now = datetime.now(UTC)
        self.objects[key] = (data, now)
        return ObjectInfo(key, len(data), now)

    def get(self, key: str) -> Iterator[bytes]:
        data = self.read(key)
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]

    def read(self, key: str) -> bytes:
        try:
            return self.objects[key][0]
        except KeyError:
            raise FileNotFoundError(key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        if key not in self.objects:
            return None
        data, modified = self.objects[key]
        return ObjectInfo(key, len(data), modified)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                data, modified = self.objects[key]
                yield ObjectInfo(key, len(data), modified)

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)
