"""The manifest: what one backup is, and its commit point.

A backup is a folder ``<backup-id>/`` of artefacts plus ``manifest.json``. The manifest is written
last (a backup without one does not exist) and deleted first. It carries its own sha256 over its
canonical JSON, so one flipped byte anywhere in it is detected, like in every artefact.
Format documented in docs/backup-format.md; ``format_version`` changes only on incompatible edits.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.core.errors import IntegrityError, UnsupportedFormat

__all__ = [
    "MANIFEST",
    "Artefact",
    "DatabaseProperties",
    "Encryption",
    "Manifest",
    "RedisFacts",
    "Role",
    "new_backup_id",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_SLUG = re.compile(r"[^a-z0-9]+")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}-\d{8}T\d{6}Z-[0-9a-f]{4}$")


def new_backup_id(database: str, at: datetime) -> str:
    """``<database-slug>-<UTC yyyymmddThhmmssZ>-<4 hex>``: sortable, unique, safe as a key."""
    slug = _SLUG.sub("-", database.lower()).strip("-")[:40] or "db"
    return f"{slug}-{at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Encryption(_Frozen):
    """Client-side encryption of an artefact (tasks/core/crypto.py); the key is never stored."""

    scheme: Literal["aes-256-gcm-stream-v1"] = "aes-256-gcm-stream-v1"
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")


class Artefact(_Frozen):
    """One stored file of a backup, exactly as stored (sizes and hash of the stored bytes)."""

    key: str  # relative to the location root: <backup-id>/<name>
    format: Literal["pg_dump-custom", "sqlite", "redis-rdb"]
    compression: Literal["zstd", "none"]
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    raw_size: int = Field(ge=0)  # size before compression
    encryption: Encryption | None = None  # None: stored unencrypted


class Role(_Frozen):
    """A role the database's objects reference; recreated (without password) when missing."""

    name: str
    superuser: bool = False
    inherit: bool = True
    createrole: bool = False
    createdb: bool = False
    login: bool = False
    replication: bool = False
    bypassrls: bool = False
    connection_limit: int = -1
    member_of: tuple[tuple[str, bool], ...] = ()  # (role, admin option)


class DatabaseProperties(_Frozen):
    """What CREATE DATABASE needs to recreate the database as it was (pg_dump -Fc omits it)."""

    owner: str
    encoding: str
    collate: str
    ctype: str
    settings: tuple[str, ...] = ()  # "name=value", as pg_db_role_setting stores them
    privileges: tuple[tuple[str, str], ...] | None = None  # (grantee or PUBLIC, privilege)


class RedisFacts(_Frozen):
    """What a Redis server said around its snapshot (INFO before and after the transfer).
    Keys per db are in ``Manifest.counts`` as ``db<n>``; ``counts_exact`` is False when the
    keyspace changed during the snapshot (counts then come from INFO after the transfer)."""

    role: str  # master / slave
    appendonly: bool
    rdb_version: int
    expiring: dict[str, int]  # keys with a TTL per db, "db0" -> n
    used_memory: int
    counts_exact: bool = True


class Manifest(_Frozen):
    format_version: int = FORMAT_VERSION
    backup_id: str
    kind: Literal["logical"] = "logical"
    engine: Literal["postgresql", "sqlite", "redis"]
    database: str
    source: str  # redacted URL
    server_version: str
    tool_version: str
    dump_tool: str
    started_at: datetime
    consistent_at: datetime  # the recovery point: data is as of this instant
    finished_at: datetime
    artefacts: tuple[Artefact, ...]
    counts: dict[str, int]  # exact rows per table, "schema"."table" -> n, same snapshot as the dump
    large_objects: int = 0
    roles: tuple[Role, ...] = ()
    database_properties: DatabaseProperties | None = None
    redis: RedisFacts | None = None  # engine "redis" only
    labels: dict[str, str] = Field(default_factory=dict)  # free-form: tier, trigger, ...

    @property
    def size(self) -> int:
        return sum(a.size for a in self.artefacts)

    def artefact(self, fmt: str) -> Artefact:
        for a in self.artefacts:
            if a.format == fmt:
                return a
        raise IntegrityError(f"backup {self.backup_id} has no {fmt} artefact")

    def to_bytes(self) -> bytes:
        body = self.model_dump(mode="json")
        body["checksum"] = hashlib.sha256(_canonical(body)).hexdigest()
        return _canonical(body)

    @classmethod
    def from_bytes(cls, raw: bytes, *, where: str = "manifest") -> Manifest:
        """Parse and check a stored manifest; raises IntegrityError if it was altered."""
        try:
            body: dict[str, Any] = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{where}: not valid JSON (corrupted?)") from exc
        if not isinstance(body, dict) or _canonical(body) != raw:
            raise IntegrityError(f"{where}: not in canonical form (altered after writing)")
        stated = body.pop("checksum", None)
        if stated != hashlib.sha256(_canonical(body)).hexdigest():
            raise IntegrityError(f"{where}: checksum mismatch (altered after writing)")
        if body.get("format_version") != FORMAT_VERSION:
            raise UnsupportedFormat(
                f"{where}: format version {body.get('format_version')!r} is not "
                f"supported by this version (expects {FORMAT_VERSION})"
            )
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise UnsupportedFormat(
                f"{where}: field {loc}: {first['msg']} (intact: written by a newer dr-pipelines?)"
            ) from exc


def _canonical(body: dict[str, Any]) -> bytes:
    return (json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
