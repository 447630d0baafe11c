"""Secret rotation for the security-breach scenario.

New random values for the configured keys of the application's Secret, and a new password for
the database role. The role's password is hashed client-side (libpq's PQencryptPasswordConn,
SCRAM-SHA-256) so the plain value never reaches the server's statement log, and the ALTER ROLE
commits only after the Secret the application reads holds the new password: the two never
disagree. New values are returned to no one: only key names leave this module.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from psycopg import sql

from tasks.core.config import SecretsConfig
from tasks.core.dburl import DatabaseURL
from tasks.core.engines.postgres import PostgresEngine, pg_errors
from tasks.core.errors import ConfigError

__all__ = ["RotationResult", "SecretWriter", "new_secret_value", "rotate_secrets"]


class SecretWriter(Protocol):
    def write_secret(self, name: str, values: Mapping[str, str]) -> None: ...


@dataclass(frozen=True)
class RotationResult:
    secret: str | None
    keys_rotated: tuple[str, ...]  # names only, never values
    database_role: str | None


def new_secret_value(nbytes: int = 32) -> str:
    """A URL-safe random value with ``nbytes`` bytes of entropy."""
    return secrets.token_urlsafe(nbytes)


def rotate_secrets(
    cfg: SecretsConfig, platform: SecretWriter, database: DatabaseURL | None
) -> RotationResult:
    if cfg.kubernetes_secret is None:
        raise ConfigError("secrets.kubernetes_secret is not set: nowhere to write new values")
    values = {key: new_secret_value() for key in cfg.rotate_keys}
    if cfg.database_role is None:
        platform.write_secret(cfg.kubernetes_secret, values)
        return RotationResult(cfg.kubernetes_secret, tuple(values), None)
    if database is None or database.engine != "postgresql":
        raise ConfigError("secrets.database_role needs a PostgreSQL database to rotate it on")
    password = new_secret_value()
    values[cfg.database_password_key] = password
    conn = PostgresEngine(database).connect(autocommit=False, what="rotate the role password")
    try:
        with pg_errors(f"rotate the password of role {cfg.database_role}"):
            verifier = conn.pgconn.encrypt_password(
                password.encode(), cfg.database_role.encode(), b"scram-sha-256"
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(cfg.database_role), sql.Literal(verifier.decode())
                )
            )
            # -- the role changes only if the application's Secret got the new password --
            platform.write_secret(cfg.kubernetes_secret, values)
            conn.commit()
    finally:
        conn.close()
    return RotationResult(cfg.kubernetes_secret, tuple(values), cfg.database_role)
