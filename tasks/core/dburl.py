"""Database URLs as the runbook's ``$DATABASE_URL`` gives them, parsed once and redacted.

Accepted: ``postgresql://`` / ``postgres://`` (plus SQLAlchemy driver suffixes such as
``postgresql+asyncpg://``) and ``sqlite:///relative.db`` / ``sqlite:////absolute.db``
(``sqlite+aiosqlite://`` too). Passwords never leave this module except through ``libpq_env``,
which is handed to child processes as environment, never as arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from tasks.core.errors import ConfigError

__all__ = ["DatabaseURL", "parse_database_url", "redact"]

Engine = Literal["postgresql", "sqlite"]
_SCHEME = re.compile(r"^(?P<base>[a-z][a-z0-9]*)(?:\+[a-z0-9_]+)?://", re.IGNORECASE)
_PASSWORD_IN_URL = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^/\s]*@", re.IGNORECASE)
_PASSWORD_IN_CONNINFO = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL password and ``password=`` conninfo value replaced by ``***``."""
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m.group('pre')}***@", text)
    return _PASSWORD_IN_CONNINFO.sub(r"\1***", text)


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL. ``str()`` of it is the redacted form."""

    engine: Engine
    dbname: str  # PostgreSQL database name, or the SQLite file name
    params: tuple[tuple[str, str], ...] = ()  # libpq keywords (PostgreSQL)
    path: Path | None = None  # SQLite file

    def __str__(self) -> str:
        if self.engine == "sqlite":
            return f"sqlite:///{self.path}"
        p = dict(self.params)
        auth = f"{p['user']}@" if "user" in p else ""
        host = p.get("host", "localhost")
        port = f":{p['port']}" if "port" in p else ""
        return f"postgresql://{auth}{host}{port}/{self.dbname}"

    @property
    def conninfo(self) -> str:
        """libpq connection string including the password: for psycopg only, never printed."""
        from psycopg.conninfo import make_conninfo  # psycopg costs 0.1 s to import: on use

        return make_conninfo(**dict(self.params), dbname=self.dbname)

    def with_dbname(self, dbname: str) -> DatabaseURL:
        return replace(self, dbname=dbname)

    def with_password(self, password: str) -> DatabaseURL:
        params = dict(self.params, password=password)
        return replace(self, params=tuple(sorted(params.items())))

    def libpq_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: connection details, password included."""
        names = {
            "host": "PGHOST",
            "port": "PGPORT",
            "user": "PGUSER",
            "password": "PGPASSWORD",
            "sslmode": "PGSSLMODE",
            "sslrootcert": "PGSSLROOTCERT",
            "sslcert": "PGSSLCERT",
            "sslkey": "PGSSLKEY",
            "passfile": "PGPASSFILE",
            "options": "PGOPTIONS",
            "connect_timeout": "PGCONNECT_TIMEOUT",
            "application_name": "PGAPPNAME",
            "target_session_attrs": "PGTARGETSESSIONATTRS",
            "service": "PGSERVICE",
        }
        env = {names[k]: v for k, v in self.params if k in names}
        env["PGDATABASE"] = self.dbname
        return env


def parse_database_url(url: str) -> DatabaseURL:
    """Parse ``url``; raises ConfigError naming what is wrong (the message is redacted)."""
    url = url.strip()
    m = _SCHEME.match(url)
    if not m:
        raise ConfigError(
            f"not a database URL: {redact(url)!r} (expected postgresql://... or sqlite:///path)"
        )
    base = m.group("base").lower()
    if base == "sqlite":
        rest = url[m.end() :]
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"SQLite URL needs a file path: sqlite:///app.db, got {url!r}")
        raw = unquote(rest[1:].split("?", 1)[0])
        if raw in ("", ":memory:"):
            raise ConfigError("an in-memory SQLite database cannot be backed up: give a file path")
        path = Path(raw).expanduser().resolve()
        return DatabaseURL("sqlite", path.name, path=path)
    if base not in ("postgresql", "postgres"):
        raise ConfigError(
            f"unsupported database URL scheme {m.group(0)!r}: use postgresql:// or sqlite:///"
        )
    plain = "postgresql://" + url[m.end() :]
    try:
        parts = urlsplit(plain)
        _ = parts.port  # raises ValueError on a non-numeric port
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(plain)
    except Exception as exc:
        raise ConfigError(
            f"invalid PostgreSQL URL {redact(url)!r}: {redact(str(exc)).splitlines()[0]}"
        ) from exc
    dbname = str(params.pop("dbname", "") or "")
    if not dbname:
        raise ConfigError(f"PostgreSQL URL names no database: {redact(url)!r} (add /dbname)")
    clean = tuple(sorted((k, str(v)) for k, v in params.items() if v is not None))
    return DatabaseURL("postgresql", dbname, params=clean)
