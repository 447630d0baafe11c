"""The manifest is the commit point: any alteration of it must be detected."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks.core.errors import IntegrityError
from tasks.core.manifest import ID_PATTERN, Artefact, Manifest, new_backup_id

T = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def _manifest() -> Manifest:
    return Manifest(
        backup_id=new_backup_id("Crypto Orchestrator", T),
        engine="postgresql",
        database="cryptoorchestrator",
        source="postgresql://app@db/cryptoorchestrator",
        server_version="15.18",
        tool_version="dr-pipelines test",
        dump_tool="pg_dump 15.18",
        started_at=T,
        consistent_at=T,
        finished_at=T,
        artefacts=(
            Artefact(
                key="x/database.pgdump.zst",
                format="pg_dump-custom",
                compression="zstd",
                size=10,
                sha256="0" * 64,
                raw_size=20,
            ),
        ),
        counts={'"public"."users"': 1000, "public.trades": 5},
        large_objects=2,
    )


def test_round_trip() -> None:
    m = _manifest()
    assert Manifest.from_bytes(m.to_bytes()) == m


def test_backup_ids_sort_by_time_and_are_safe_keys() -> None:
    a = new_backup_id("Crypto Orchestrator", T)
    b = new_backup_id("Crypto Orchestrator", T.replace(hour=3))
    assert ID_PATTERN.match(a)
    assert a.startswith("crypto-orchestrator-20261130T020000Z-")
    assert a < b


def test_every_single_bit_flip_is_detected() -> None:
    raw = _manifest().to_bytes()
    for i in range(len(raw)):
        for bit in (0x01, 0x04, 0x20):
            altered = bytearray(raw)
            altered[i] ^= bit
            with pytest.raises(IntegrityError):
                Manifest.from_bytes(bytes(altered))


def test_truncation_and_unknown_version_are_detected() -> None:
    raw = _manifest().to_bytes()
    with pytest.raises(IntegrityError, match="not valid JSON"):
        Manifest.from_bytes(raw[:-10])
    with pytest.raises(IntegrityError):
        Manifest.from_bytes(b"")
