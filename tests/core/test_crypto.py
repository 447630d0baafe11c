"""Segmented AES-256-GCM: round trips at every size edge, and every kind of tampering caught."""

from __future__ import annotations

import base64
import os

import pytest

from tasks.core.crypto import Decryptor, EncryptionKey, Encryptor
from tasks.core.errors import ConfigError, IntegrityError

SEG = 1 << 20
KEY = EncryptionKey(bytes(range(32)), "test")


def _encrypt(data: bytes, key: EncryptionKey = KEY, step: int = 300_000) -> bytes:
    enc = Encryptor(key)
    out = b"".join(enc.update(data[i : i + step]) for i in range(0, len(data), step))
    return out + enc.finalize()


def _decrypt(blob: bytes, key: EncryptionKey = KEY, step: int = 123_457) -> bytes:
    dec = Decryptor(key, "b/x.zst")
    out = b"".join(dec.update(blob[i : i + step]) for i in range(0, len(blob), step))
    return out + dec.finalize()


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17])
def test_round_trip_at_segment_edges(size: int) -> None:
    data = os.urandom(size)
    blob = _encrypt(data)
    assert size < 64 or data[:64] not in blob  # short inputs may occur by chance
    assert _decrypt(blob) == data
    assert _decrypt(blob, step=1 << 30) == data  # all at once


def test_same_plaintext_encrypts_differently_each_time() -> None:
    assert _encrypt(b"x" * 1000) != _encrypt(b"x" * 1000)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:],  # a flipped bit in segment 0
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # in the last tag
        lambda b: b[:8] + bytes([b[8] ^ 1]) + b[9:],  # in the header (key id)
        lambda b: b[:25] + bytes([b[25] ^ 1]) + b[26:],  # in the nonce prefix
        lambda b: b[: 22 + SEG + 16],  # cut at a segment boundary
        lambda b: b[:-5],  # cut inside the last segment
        lambda b: b + b"\x00" * 16,  # extended
        lambda b: b[:22] + b[22 + SEG + 16 : 22 + 2 * (SEG + 16)] + b[22:],  # reordered
        lambda b: b[:10],  # cut inside the header
    ],
    ids=[
        "bit-in-data",
        "bit-in-tag",
        "bit-in-key-id",
        "bit-in-nonce-prefix",
        "truncated-at-boundary",
        "truncated-inside",
        "extended",
        "reordered",
        "header-only",
    ],
)
def test_any_change_to_the_stored_bytes_is_caught(tamper: object) -> None:
    blob = _encrypt(os.urandom(2 * SEG + 1000))
    with pytest.raises((IntegrityError, ConfigError)):
        _decrypt(tamper(blob))  # type: ignore[operator]


def test_wrong_key_names_both_key_ids_before_decrypting() -> None:
    other = EncryptionKey(os.urandom(32), "$DR_ENCRYPTION_KEY")
    with pytest.raises(ConfigError) as exc:
        _decrypt(_encrypt(b"secret data"), key=other)
    msg = str(exc.value)
    assert KEY.key_id in msg
    assert other.key_id in msg
    assert "$DR_ENCRYPTION_KEY" in msg


def test_keys_from_text_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    assert EncryptionKey.from_text(base64.b64encode(raw).decode()).material == raw
    assert EncryptionKey.from_text(raw.hex()).material == raw
    monkeypatch.setenv("K", base64.b64encode(raw).decode() + "\n")
    key = EncryptionKey.from_env("K")
    assert key is not None
    assert key.material == raw
    assert key.source == "$K"
    monkeypatch.setenv("K", "")
    assert EncryptionKey.from_env("K") is None
    assert raw.hex() not in repr(key)
    assert base64.b64encode(raw).decode() not in repr(key)


@pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"short").decode(), "ab" * 31])
def test_bad_key_text_is_one_clear_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="openssl rand -base64 32"):
        EncryptionKey.from_text(text, "$K")
