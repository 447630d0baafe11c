"""One contract, every backend: local directory, memory, and S3 through moto's server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.core.errors import ConfigError
from tasks.core.storage import CHUNK, Storage
from tasks.core.storage import s3 as s3mod
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.memory import MemoryStorage
from tasks.core.storage.s3 import S3Storage


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "backups")
    elif request.param == "memory":
        yield MemoryStorage()
    else:
        yield S3Storage(request.getfixturevalue("bucket"), "database-backups")


def test_put_read_stat_list_delete(storage: Storage) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    info = storage.put("b1/manifest.json", b'{"a": 1}\n')
    assert info.size == 9
    assert storage.read("b1/manifest.json") == b'{"a": 1}\n'
    stat = storage.stat("b1/manifest.json")
    assert stat is not None
    assert stat.size == 9
    assert stat.modified >= before
    storage.put("b2/x", b"x")
    assert [o.key for o in storage.list()] == ["b1/manifest.json", "b2/x"]
    assert [o.key for o in storage.list("b2/")] == ["b2/x"]
    storage.delete("b1/manifest.json")
    storage.delete("b1/manifest.json")  # deleting twice is fine
    assert storage.stat("b1/manifest.json") is None
    assert [o.key for o in storage.list()] == ["b2/x"]


def test_missing_key_raises_file_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read("nope/manifest.json")
    with pytest.raises(FileNotFoundError):
        b"".join(storage.get("nope/x"))


def test_streamed_write_is_invisible_until_commit(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3mod, "PART_SIZE", 5 * CHUNK + 17)  # several parts, S3's 5 MiB minimum
    payload = bytes(range(256)) * (CHUNK // 256) * 12 + b"tail"  # 12 MiB + 4 bytes
    writer = storage.open_writer("big/data.bin")
    for i in range(0, len(payload), CHUNK // 2 + 3):  # odd chunking on purpose
        writer.write(payload[i : i + CHUNK // 2 + 3])
    assert storage.stat("big/data.bin") is None
    assert [o.key for o in storage.list("big/") if not o.key.startswith("big/.tmp")] == []
    info = writer.commit()
    assert info.size == len(payload)
    assert b"".join(storage.get("big/data.bin")) == payload


def test_aborted_write_leaves_nothing(storage: Storage) -> None:
    writer = storage.open_writer("gone/data.bin")
    writer.write(b"x" * 1000)
    writer.abort()
    writer.abort()  # idempotent
    assert list(storage.list("gone/")) == []


def test_commit_replaces_existing_object(storage: Storage) -> None:
    storage.put("k/v", b"old")
    w = storage.open_writer("k/v")
    w.write(b"new!")
    assert storage.read("k/v") == b"old"
    w.commit()
    assert storage.read("k/v") == b"new!"


def test_local_files_are_private(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "backups")
    store.put("b/manifest.json", b"{}")
    assert (tmp_path / "backups" / "b" / "manifest.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "backups" / "b").stat().st_mode & 0o777 == 0o700


def test_local_rejects_keys_outside_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="escapes"):
        LocalStorage(tmp_path).put("../evil", b"x")


def test_s3_missing_bucket_is_one_clear_config_error(moto_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        S3Storage("no-such-bucket").put("a/b", b"x")
