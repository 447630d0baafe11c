"""Streaming artefacts in and out of locations: compress, hash and fan out in one pass.

Writing: raw bytes go through zstd, the compressed stream is hashed (sha256) and written to every
location at once. The first location is the primary (the backup dir): when it fails (disk full,
I/O error) the whole artefact is abandoned everywhere, so that no backup exists only where the
primary is not. A secondary location (S3) that fails is dropped and reported, the others go on
(a backup that reached only the local disk is still a backup, listed as local-only).
Reading: the stored stream is hashed while it is decompressed into a file, and the file is
handed over only if size and hash match the manifest. Reading + hashing, decompressing, and
writing run on three threads at once (tasks/core/pipeline.py). Memory stays bounded: a few
chunks in flight per stage plus what S3 buffers per part.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import zstandard

from tasks.core.crypto import Decryptor, EncryptionKey, Encryptor
from tasks.core.errors import ConfigError, DRError, IntegrityError, PermanentError
from tasks.core.manifest import Artefact, Encryption
from tasks.core.pipeline import WriteBehind, prefetch
from tasks.core.storage import Storage, Writer

__all__ = [
    "ArtefactWriter",
    "LocationFailure",
    "check_stored",
    "fetch_artefact",
    "iter_verified",
    "require_key",
]

Progress = Callable[[int], None]
# chosen by measurement (docs/benchmarks.md, "Compression choice"): on database dumps level 1
# was both faster and smaller than level 3, and decompresses faster (restores fetch sooner)
ZSTD_LEVEL = 1
# Multithreaded zstd buffers whole jobs per worker; its default job (8 MiB at level 3) put the
# dr process at ~175 MiB peak RSS. 2 MiB jobs: ~85 MiB, same ratio (docs/benchmarks.md).
ZSTD_JOB_SIZE = 2 << 20


class LocationFailure(DRError):
    """One location failed while the others went on."""

    def __init__(self, location: str, error: BaseException) -> None:
        super().__init__(f"{location}: {error}")
        self.location, self.error = location, error


class ArtefactWriter:
    """Writes one artefact to several locations; ``close()`` returns its description."""

    def __init__(
        self,
        locations: Sequence[Storage],
        key: str,
        *,
        fmt: Literal["pg_dump-custom", "sqlite", "redis-rdb"],
        compress: bool = True,
        level: int = ZSTD_LEVEL,
        threads: int | None = None,
        encryption: EncryptionKey | None = None,
    ) -> None:
        """``encryption``: seal the (compressed) stream with this key before it is hashed and
        leaves the machine (tasks/core/crypto.py); the manifest records the key id."""
        self.key, self.fmt = key, fmt
        self._enc = Encryptor(encryption) if encryption else None
        self._key_id = encryption.key_id if encryption else None
        self.failures: list[LocationFailure] = []
        self._writers: dict[str, tuple[Storage, Writer]] = {}
        self._primary = locations[0].url if locations else ""
        for loc in locations:
            try:
                self._writers[loc.url] = (loc, loc.open_writer(key))
            except ConfigError:  # a location misconfigured (no bucket, no access): the user's
                self.abort()  # to fix, before anything is written anywhere
                raise
            except DRError as exc:
                self._failed(loc.url, exc)
        if not self._writers:
            raise self.failures[0].error
        self._hash = hashlib.sha256()
        self._size = self._raw = 0
        nthreads = threads if threads is not None else min(os.cpu_count() or 1, 4)
        self._zstd = (
            zstandard.ZstdCompressor(
                compression_params=zstandard.ZstdCompressionParameters.from_level(
                    level,
                    threads=nthreads,
                    job_size=ZSTD_JOB_SIZE if nthreads > 0 else 0,
                    write_checksum=True,
                )
            ).compressobj()
            if compress
            else None
        )

    @property
    def live_locations(self) -> list[Storage]:
        return [loc for loc, _ in self._writers.values()]

    def _failed(self, url: str, exc: DRError) -> None:
        """Record that ``url`` failed; when it is the primary, abandon every location and raise."""
        self.failures.append(LocationFailure(url, exc))
        if url != self._primary:
            return
        others = [u for u in self._writers if u != url]
        self.abort()
        also = f"; not committed in {', '.join(others)} either" if others else ""
        raise PermanentError(f"backup not stored in {url}: {exc}{also}") from exc

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._hash.update(data)
        self._size += len(data)
        for url, (loc, writer) in list(self._writers.items()):
            try:
                writer.write(data)
            except DRError as exc:
                writer.abort()
                del self._writers[url]
                self._failed(loc.url, exc)
        if not self._writers:
            raise self.failures[-1].error

    def write(self, raw: bytes) -> None:
        self._raw += len(raw)
        data = self._zstd.compress(raw) if self._zstd else raw
        self._emit(self._enc.update(data) if self._enc else data)

    def close(self) -> Artefact:
        """Flush and commit in every live location; raises if none committed."""
        tail = self._zstd.flush() if self._zstd else b""
        self._emit(self._enc.update(tail) + self._enc.finalize() if self._enc else tail)
        for url, (loc, writer) in list(self._writers.items()):
            try:
                writer.commit()
            except DRError as exc:
                del self._writers[url]
                self._failed(loc.url, exc)
        if not self._writers:
            raise self.failures[-1].error
        return Artefact(
            key=self.key,
            format=self.fmt,
            compression="zstd" if self._zstd else "none",
            encryption=Encryption(key_id=self._key_id) if self._key_id else None,
            size=self._size,
            sha256=self._hash.hexdigest(),
            raw_size=self._raw,
        )

    def abort(self) -> None:
        for _, writer in self._writers.values():
            writer.abort()
        self._writers.clear()


def iter_verified(
    storage: Storage,
    art: Artefact,
    progress: Progress | None = None,
    key: EncryptionKey | None = None,
) -> Iterable[bytes]:
    """The artefact's *plain* bytes (decrypted, decompressed); raises IntegrityError at the end
    if the stored bytes do not match size and sha256 (so callers must not act on the data before
    exhaustion). An encrypted artefact needs ``key``: without it, or with another key, this
    raises ConfigError before reading anything."""
    where = f"{storage.url}/{art.key}"
    dec = _decryptor(art, key, where)
    unz = zstandard.ZstdDecompressor().decompressobj() if art.compression == "zstd" else None
    digest, size = hashlib.sha256(), 0
    broken: Exception | None = None

    def plain(data: bytes, last: bool = False) -> bytes:
        if dec is not None:
            data = dec.update(data) + (dec.finalize() if last else b"")
        return unz.decompress(data) if unz is not None and data else data

    def stored() -> Iterator[bytes]:  # on the read-ahead thread: reading and hashing
        for chunk in storage.get(art.key):
            digest.update(chunk)
            yield chunk

    try:
        for chunk in prefetch(stored()):
            size += len(chunk)
            if progress:
                progress(len(chunk))
            if size > art.size:
                raise IntegrityError(f"{where}: larger than the manifest says ({art.size} bytes)")
            if broken is not None:
                continue  # keep hashing: the sha256 verdict is the precise one
            try:
                out = plain(chunk)
            except (zstandard.ZstdError, IntegrityError) as exc:
                broken = exc
                continue
            if out:
                yield out
    except FileNotFoundError as exc:
        raise IntegrityError(f"{where}: missing") from exc
    if size != art.size:
        raise IntegrityError(f"{where}: {size} bytes, manifest says {art.size} (truncated?)")
    if digest.hexdigest() != art.sha256:
        raise IntegrityError(f"{where}: sha256 mismatch (corrupted)")
    if broken is None:
        try:
            out = plain(b"", last=True)
        except (zstandard.ZstdError, IntegrityError) as exc:
            broken = exc
        else:
            if out:
                yield out
    if isinstance(broken, IntegrityError):
        raise broken
    if broken is not None:
        raise IntegrityError(f"{where}: corrupt zstd stream: {broken}")
    if unz is not None and not unz.eof:
        raise IntegrityError(f"{where}: zstd stream ends early (truncated)")


def require_key(art: Artefact, key: EncryptionKey | None) -> None:
    """Raise ConfigError unless ``key`` opens ``art`` (or it is not encrypted): what
    ``iter_verified`` would say, before reading anything."""
    _decryptor(art, key, art.key)


def _decryptor(art: Artefact, key: EncryptionKey | None, where: str) -> Decryptor | None:
    if art.encryption is None:
        return None
    if key is None:
        raise ConfigError(
            f"{where} is encrypted (key id {art.encryption.key_id}): give its key "
            "(DR_ENCRYPTION_KEY, or [encryption] in dr.toml)"
        )
    if key.key_id != art.encryption.key_id:
        raise ConfigError(
            f"{where} is encrypted with key id {art.encryption.key_id}, but the key"
            f"{' from ' + key.source if key.source else ''} has id {key.key_id}: "
            "give the backup's key"
        )
    return Decryptor(key, where)


def check_stored(storage: Storage, art: Artefact, progress: Progress | None = None) -> None:
    """Size and sha256 of the stored bytes only (no key needed); raises IntegrityError."""
    digest, size = hashlib.sha256(), 0

    def stored() -> Iterator[bytes]:  # on the read-ahead thread: reading and hashing
        for chunk in storage.get(art.key):
            digest.update(chunk)
            yield chunk

    try:
        for chunk in prefetch(stored()):
            size += len(chunk)
            if progress:
                progress(len(chunk))
    except FileNotFoundError as exc:
        raise IntegrityError(f"{storage.url}/{art.key}: missing") from exc
    if size != art.size:
        raise IntegrityError(
            f"{storage.url}/{art.key}: {size} bytes, manifest says {art.size} (truncated?)"
        )
    if digest.hexdigest() != art.sha256:
        raise IntegrityError(f"{storage.url}/{art.key}: sha256 mismatch (corrupted)")


def fetch_artefact(
    storage: Storage,
    art: Artefact,
    dest: Path,
    progress: Progress | None = None,
    observe: Callable[[bytes], None] | None = None,
    key: EncryptionKey | None = None,
) -> Path:
    """Decompress the artefact into ``dest`` (0600); the file exists only if it checked out.
    ``observe`` sees every decompressed chunk in order, once it is in the file (written and
    flushed: it may read the file behind the writer, which is ``partial_path(dest)``)."""
    tmp = partial_path(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            _copy(iter_verified(storage, art, progress, key), f, observe)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def partial_path(dest: Path) -> Path:
    """Where ``fetch_artefact`` writes until the artefact checked out."""
    return dest.with_name(dest.name + ".partial")


def _copy(
    chunks: Iterable[bytes], f: BinaryIO, observe: Callable[[bytes], None] | None = None
) -> None:
    """Write (and observe) on a write-behind thread while ``chunks`` reads, hashes and
    decompresses: the three stages overlap (tasks/core/pipeline.py)."""

    def sink(chunk: bytes) -> None:
        f.write(chunk)
        if observe:
            f.flush()
            observe(chunk)

    with WriteBehind(sink) as behind:
        for chunk in chunks:
            behind.put(chunk)
