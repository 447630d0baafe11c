"""Client-side encryption of artefacts: AES-256-GCM over fixed-size segments, streaming.

Every artefact is encrypted before it leaves the machine, after compression (ciphertext does not
compress). The construction is the "STREAM" one used by age and Tink: the plaintext is cut into
segments of 1 MiB, each sealed on its own with AES-256-GCM, so neither side ever holds more than
one segment and any change, reordering, truncation or extension of the stored bytes fails
authentication.

Stored layout::

    header   b"DRENC1" | segment size as a power of two (1 byte) | key id (8) | nonce prefix (7)
    segment  AES-256-GCM(key, nonce, plaintext[i], aad=header) = ciphertext + 16-byte tag
    nonce    nonce prefix (7, random per artefact) | segment number (4, big-endian) | last (1)

Only the final segment has the "last" byte set (it may be empty), so cutting the stream at a
segment boundary is detected as well. The header is authenticated with every segment. The key id
(the first 8 bytes of a SHA-256 over the key) is in the header and in the manifest: a restore with
another key fails before any decryption, saying which key the backup needs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tasks.core.errors import ConfigError, IntegrityError

__all__ = ["SCHEME", "Decryptor", "EncryptionKey", "Encryptor", "key_id_of"]

SCHEME = "aes-256-gcm-stream-v1"
_MAGIC = b"DRENC1"
_SEGMENT_LOG2 = 20  # 1 MiB of plaintext per segment
_TAG = 16
_HEADER = len(_MAGIC) + 1 + 8 + 7


@dataclass(frozen=True)
class EncryptionKey:
    """A 256-bit key. Its bytes never appear in ``repr`` or messages; the key id does."""

    material: bytes = field(repr=False)
    source: str = ""  # where it came from, for messages: "$DR_ENCRYPTION_KEY", "block dr-key"

    def __post_init__(self) -> None:
        if len(self.material) != 32:
            raise ConfigError(
                f"encryption key{self._from}: {len(self.material)} bytes, need 32 "
                "(generate one with: openssl rand -base64 32)"
            )

    @property
    def _from(self) -> str:
        return f" from {self.source}" if self.source else ""

    @property
    def key_id(self) -> str:
        return key_id_of(self.material)

    @classmethod
    def from_text(cls, text: str, source: str = "") -> EncryptionKey:
        """A key written as base64 (``openssl rand -base64 32``) or as 64 hex digits."""
        text = text.strip()
        try:
            raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            where = f" in {source}" if source else ""
            raise ConfigError(
                f"encryption key{where} is neither base64 nor hex "
                "(generate one with: openssl rand -base64 32)"
            ) from None
        return cls(raw, source)

    @classmethod
    def from_env(cls, name: str) -> EncryptionKey | None:
        """The key in environment variable ``name``; None when it is unset or empty."""
        value = os.environ.get(name, "")
        return cls.from_text(value, f"${name}") if value.strip() else None


def key_id_of(material: bytes) -> str:
    return hashlib.sha256(b"dr-pipelines key id\x00" + material).hexdigest()[:16]


def _nonce(prefix: bytes, n: int, last: bool) -> bytes:
    if n >= 1 << 32:
        raise IntegrityError("artefact too large for one encrypted stream (4 PiB)")
    return prefix + n.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class Encryptor:
    """``update`` returns ciphertext as whole segments become available; ``finalize`` seals
    the last one. The first bytes returned are the header."""

    def __init__(self, key: EncryptionKey) -> None:
        self._aead = AESGCM(key.material)
        self._prefix = secrets.token_bytes(7)
        self._header = _MAGIC + bytes([_SEGMENT_LOG2]) + bytes.fromhex(key.key_id) + self._prefix
        self._size = 1 << _SEGMENT_LOG2
        self._buf = bytearray()
        self._n = 0
        self._started = False

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._header

    def update(self, data: bytes) -> bytes:
        out = [self._start()]
        self._buf += data
        # keep at least one byte back: the last segment must be sealed by finalize()
        while len(self._buf) > self._size:
            seg = bytes(self._buf[: self._size])
            del self._buf[: self._size]
            out.append(self._aead.encrypt(_nonce(self._prefix, self._n, False), seg, self._header))
            self._n += 1
        return b"".join(out)

    def finalize(self) -> bytes:
        head = self._start()
        last = self._aead.encrypt(
            _nonce(self._prefix, self._n, True), bytes(self._buf), self._header
        )
        self._buf.clear()
        return head + last


class Decryptor:
    """The inverse of ``Encryptor``: ``update`` returns plaintext of every complete segment;
    ``finalize`` checks the stream ended with its sealed last segment. Raises IntegrityError on
    any tampering and ConfigError when ``key`` is not the key the artefact was written with."""

    def __init__(self, key: EncryptionKey, where: str) -> None:
        self._key = key
        self._where = where
        self._aead = AESGCM(key.material)
        self._header: bytes | None = None
        self._buf = bytearray()
        self._n = 0
        self._seg = 0
        self._ended = False

    def update(self, data: bytes) -> bytes:
        self._buf += data
        if self._header is None:
            if len(self._buf) < _HEADER:
                return b""
            self._read_header(bytes(self._buf[:_HEADER]))
            del self._buf[:_HEADER]
        out = []
        # a full segment followed by more bytes cannot be the last one
        while len(self._buf) > self._seg:
            out.append(self._open(bytes(self._buf[: self._seg]), last=False))
            del self._buf[: self._seg]
        return b"".join(out)

    def finalize(self) -> bytes:
        if self._header is None:
            raise IntegrityError(f"{self._where}: encrypted stream ends inside its header")
        return self._open(bytes(self._buf), last=True)

    def _read_header(self, header: bytes) -> None:
        if header[: len(_MAGIC)] != _MAGIC:
            raise IntegrityError(f"{self._where}: not an encrypted artefact (bad header)")
        log2 = header[len(_MAGIC)]
        if not 10 <= log2 <= 26:
            raise IntegrityError(f"{self._where}: implausible segment size 2^{log2}")
        stated = header[len(_MAGIC) + 1 : len(_MAGIC) + 9].hex()
        if stated != self._key.key_id:
            raise ConfigError(
                f"{self._where}: encrypted with key id {stated}, but the key"
                f"{self._key._from} has id {self._key.key_id}: provide the backup's key"
            )
        self._header = header
        self._prefix = header[len(_MAGIC) + 9 :]
        self._seg = (1 << log2) + _TAG

    def _open(self, seg: bytes, *, last: bool) -> bytes:
        if self._ended:
            raise IntegrityError(f"{self._where}: data after the last encrypted segment")
        assert self._header is not None
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, self._n, last), seg, self._header)
        except InvalidTag:
            what = "truncated or altered" if last else "altered"
            raise IntegrityError(
                f"{self._where}: segment {self._n} fails authentication ({what})"
            ) from None
        self._n += 1
        self._ended = last
        return plain
