"""Secret rotation against real PostgreSQL: the role password and the app's Secret agree."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

import pytest

from tasks.core.config import SecretsConfig
from tasks.core.dburl import parse_database_url
from tasks.core.pgcluster import PgCluster
from tasks.core.secrets import rotate_secrets
from tests.conftest import psql


class SecretStore:
    """The application's secrets as a platform holds them (a test double of our own protocol)."""

    def __init__(self, fail: bool = False) -> None:
        self.secrets: dict[str, dict[str, str]] = {}
        self.fail = fail

    def write_secret(self, name: str, values: Mapping[str, str]) -> None:
        if self.fail:
            raise RuntimeError("cluster unavailable")
        self.secrets.setdefault(name, {}).update(values)


def _password_matches(verifier: str, password: str) -> bool:
    """Check a SCRAM-SHA-256 verifier (RFC 5803 format) against a password."""
    _, rest = verifier.split("$", 1)
    iter_salt, keys = rest.split("$")
    iterations, salt = iter_salt.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest() == stored_key


@pytest.fixture
def role(pg: PgCluster, dbname: str) -> str:
    name = f"{dbname}_app"
    psql(pg.url, f"CREATE ROLE {name} LOGIN PASSWORD 'old-password'")
    return name


def _verifier(pg: PgCluster, role: str) -> str:
    return psql(pg.url, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")


def test_rotation_sets_new_values_everywhere(pg: PgCluster, role: str) -> None:
    store = SecretStore()
    cfg = SecretsConfig(
        kubernetes_secret="app-secrets", rotate_keys=("JWT_SECRET", "API_KEY"), database_role=role
    )
    result = rotate_secrets(cfg, store, parse_database_url(pg.url))
    assert result.keys_rotated == ("JWT_SECRET", "API_KEY", "DATABASE_PASSWORD")
    written = store.secrets["app-secrets"]
    assert len({written["JWT_SECRET"], written["API_KEY"], written["DATABASE_PASSWORD"]}) == 3
    assert all(len(v) >= 40 for v in written.values())
    verifier = _verifier(pg, role)
    assert _password_matches(verifier, written["DATABASE_PASSWORD"])
    assert not _password_matches(verifier, "old-password")
    assert all(v not in repr(result) for v in written.values())


def test_role_password_unchanged_when_the_secret_cannot_be_written(
    pg: PgCluster, role: str
) -> None:
    before = _verifier(pg, role)
    cfg = SecretsConfig(kubernetes_secret="app-secrets", database_role=role)
    with pytest.raises(RuntimeError, match="cluster unavailable"):
        rotate_secrets(cfg, SecretStore(fail=True), parse_database_url(pg.url))
    assert _verifier(pg, role) == before
    assert _password_matches(before, "old-password")
