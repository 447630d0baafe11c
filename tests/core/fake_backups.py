"""Committed backups without a database: a valid manifest plus one artefact of the given size,
for tests of what reads the catalog (retention, monitor, metrics)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from tasks.core.catalog import VERIFICATION, Verification
from tasks.core.manifest import MANIFEST, Artefact, Manifest, new_backup_id
from tasks.core.storage import Storage


def put_backup(
    locations: Sequence[Storage],
    database: str,
    at: datetime,
    *,
    size: int = 100,
    verified: bool | None = None,
    engine: str = "postgresql",
) -> str:
    backup_id = new_backup_id(database, at)
    data = b"x" * size
    art = Artefact(
        key=f"{backup_id}/database.pgdump.zst",
        format="pg_dump-custom",
        compression="zstd",
        size=size,
        sha256=hashlib.sha256(data).hexdigest(),
        raw_size=size,
    )
    manifest = Manifest(
        backup_id=backup_id,
        engine=engine,  # type: ignore[arg-type]
        database=database,
        source=f"postgresql://app@db/{database}",
        server_version="15",
        tool_version="test",
        dump_tool="pg_dump 15",
        started_at=at,
        consistent_at=at,
        finished_at=at,
        artefacts=(art,),
        counts={},
    )
    for loc in locations:
        loc.put(art.key, data)
        loc.put(f"{backup_id}/{MANIFEST}", manifest.to_bytes())
        if verified is not None:
            loc.put(f"{backup_id}/{VERIFICATION}", Verification(at, verified).to_bytes())
    return backup_id
