"""Redis backups against real redis-server processes: snapshot (diskless, disk, ACL, TLS),
manifest facts, verification, and both restore modes (into a controlled server with AOF, and key
by key into another server), with moto S3 as the second location."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from tasks.core.catalog import Catalog, utcnow
from tasks.core.engines.redis import RedisServer, parse_redis_url, snapshot
from tasks.core.errors import (
    ConfigError,
    ConsentRequired,
    IntegrityError,
    PermanentError,
    TransientError,
)
from tasks.core.manifest import MANIFEST, Manifest
from tasks.core.platform import ScaleState
from tasks.core.platform.local import LocalPlatform, LocalWorkload
from tasks.core.redis_backup import (
    REDIS_ARTEFACT,
    backup_redis,
    plan_redis_restore,
    restore_redis,
)
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.s3 import S3Storage
from tasks.core.verify import Status, verify_catalog
from tests.conftest import run_dr
from tests.redis_server import RedisProcess

BIG = 11 << 20  # a value larger than 10 MB (random: LZF cannot shrink it)


def fill(server: RedisProcess) -> dict[int, dict[bytes, object]]:
    """Several dbs, every common type, a large value, keys with TTLs; returns their contents."""
    c = server.client()
    c.set("plain", "value")
    c.set("big", os.urandom(BIG))
    c.rpush("list", *range(500))
    c.hset("hash", mapping={f"field{i}": f"value{i}" for i in range(1000)})
    c.hset("small-hash", mapping={"a": "1"})
    c.sadd("set", *[f"m{i}" for i in range(300)])
    c.zadd("zset", {f"m{i}": i / 3 for i in range(300)})
    for i in range(50):
        c.xadd("stream", {"n": i})
    c.xgroup_create("stream", "workers", id="0")
    c.xreadgroup("workers", "w1", {"stream": ">"}, count=10)
    for i in range(20):
        c.set(f"session:{i}", "x", ex=3600 + i)
    c2 = server.client(2)
    for i in range(100):
        c2.set(f"cache:{i}", i)
    c2.set("expiring", "y", px=7_200_000)
    return dumps(server)


def dumps(server: RedisProcess) -> dict[int, dict[bytes, object]]:
    """Every key's type and content per db (DUMP bytes differ for hash tables: field order)."""
    out: dict[int, dict[bytes, object]] = {}
    for db in (0, 1, 2):
        c = server.client(db)
        keys = list(c.scan_iter(count=1000))
        if keys:
            out[db] = {k: _content(c, k) for k in keys}
    return out


def _content(c: redis.Redis, key: bytes) -> object:
    kind = c.type(key)
    read = {
        b"string": lambda: c.get(key),
        b"list": lambda: c.lrange(key, 0, -1),
        b"hash": lambda: c.hgetall(key),
        b"set": lambda: c.smembers(key),
        b"zset": lambda: c.zrange(key, 0, -1, withscores=True),
        b"stream": lambda: (c.xrange(key), c.xinfo_groups(key), c.xpending(key, "workers")),
    }
    return kind, read[kind]()


def expiry_times(server: RedisProcess) -> dict[tuple[int, bytes], int]:
    """When each key with a TTL expires (PEXPIRETIME: Unix ms)."""
    out = {}
    for db in (0, 2):
        c = server.client(db)
        for k in c.scan_iter(count=1000):
            at = int(c.execute_command("PEXPIRETIME", k))
            if at >= 0:
                out[(db, k)] = at
    return out


@pytest.fixture
def catalog(tmp_path: Path, bucket: str) -> Catalog:
    return Catalog([LocalStorage(tmp_path / "backups"), S3Storage(bucket, "backups")])


def test_backup_to_disk_and_s3_then_replay_keys_into_another_server(
    redis_server: RedisProcess, catalog: Catalog, tmp_path: Path
) -> None:
    before = fill(redis_server)
    result = backup_redis(parse_redis_url(redis_server.url), catalog)

    m = result.manifest
    assert len(result.committed) == 2
    assert not result.failed
    assert m.engine == "redis"
    assert m.database == "redis"
    assert m.counts == {"db0": 28, "db2": 101}
    assert m.redis is not None
    assert m.redis.expiring == {"db0": 20, "db2": 1}
    assert m.redis.role == "master"
    assert m.redis.appendonly is False
    assert m.redis.rdb_version >= 9
    assert m.redis.counts_exact
    assert m.redis.used_memory > BIG
    assert m.server_version.startswith(("6.", "7.", "8."))
    assert m.artefacts[0].format == "redis-rdb"
    assert m.artefacts[0].raw_size > BIG
    assert m.dump_tool == "replication SYNC (diskless)"

    report = verify_catalog(catalog, now=utcnow())
    assert report.ok, report.results
    assert all("CRC64 ok" in r.detail for r in report.results)

    expected_ttls = expiry_times(redis_server)
    target = RedisProcess(tmp_path / "target").start()
    try:
        target.client().set("unrelated", "kept")
        entry = catalog.get(m.backup_id)
        plan = plan_redis_restore(parse_redis_url(target.url), entry, mode="keys")
        done = restore_redis(plan, confirm=True)
        assert done.source.endswith("backups")  # the local copy first
        after = dumps(target)
        assert after[0].pop(b"unrelated") == (b"string", b"kept")  # left alone
        assert after == before
        got = expiry_times(target)
        assert got.keys() == expected_ttls.keys()
        for key, ms in expected_ttls.items():
            assert abs(got[key] - ms) < 1000, key  # the same expiry, within a second
    finally:
        target.stop()


def test_restore_into_a_controlled_server_with_aof_ends_in_its_aof(
    tmp_path: Path, catalog: Catalog
) -> None:
    server = RedisProcess(tmp_path / "aof", ["--appendonly", "yes"]).start()
    writer = LocalPlatform(
        tmp_path / "state", [LocalWorkload(name="worker", command=["sleep", "600"])]
    )
    try:
        writer.scale_up(ScaleState({"worker": 1}))
        before = fill(server)
        m = backup_redis(parse_redis_url(server.url), catalog).manifest
        assert m.redis is not None
        assert m.redis.appendonly
        c = server.client()
        c.flushall()
        c.set("written-after-the-backup", "gone after the restore")

        url = parse_redis_url(server.url)
        plan = plan_redis_restore(
            url, catalog.get(m.backup_id), mode="server", control="local", writers=("worker",)
        )
        assert any("stop worker" in line for line in plan.describe())
        done = restore_redis(
            plan, confirm=True, server=RedisServer(url, server.command), platform=writer
        )

        assert done.aof_rewritten
        assert {d: a for d, _, a in done.counts} == {"db0": 28, "db2": 101}
        assert dumps(server) == before
        assert int(server.client().info("persistence")["aof_enabled"]) == 1
        assert writer.replicas(["worker"]) == {"worker": 1}  # writers started again
        kept = {Path(p).name for p in done.kept}
        assert any(n.startswith("appendonlydir.pre_restore_") for n in kept)

        # restart it as it is configured (appendonly yes): it loads the AOF, which must hold
        # the restored data
        server.restart()
        assert dumps(server) == before
        assert not server.client().exists("written-after-the-backup")
    finally:
        writer.scale_down(["worker"])
        server.stop()


def test_restore_refuses_a_corrupted_snapshot_and_changes_nothing(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    redis_server.client().set("k", "v")
    catalog = Catalog([LocalStorage(tmp_path / "backups")])
    m = backup_redis(parse_redis_url(redis_server.url), catalog).manifest
    # a snapshot damaged before it was stored (sha256 then matches the damage): only the RDB's
    # own CRC64 can tell; rewrite the artefact and its manifest as a faulty transfer would
    folder = tmp_path / "backups" / m.backup_id
    from tasks.core.artefacts import ArtefactWriter, iter_verified

    raw = b"".join(iter_verified(catalog.locations[0], m.artefacts[0]))
    damaged = raw.replace(b"k\x01v", b"k\x01w")
    assert damaged != raw
    writer = ArtefactWriter(catalog.locations, f"{m.backup_id}/{REDIS_ARTEFACT}", fmt="redis-rdb")
    writer.write(damaged)
    art = writer.close()
    (folder / MANIFEST).write_bytes(m.model_copy(update={"artefacts": (art,)}).to_bytes())
    Manifest.from_bytes((folder / MANIFEST).read_bytes())

    report = verify_catalog(catalog, now=utcnow())
    assert [r.status for r in report.results] == [Status.CHECKSUM_MISMATCH]
    assert "CRC64 mismatch" in report.results[0].detail

    redis_server.client().set("k", "current")
    url = parse_redis_url(redis_server.url)
    plan = plan_redis_restore(url, catalog.get(m.backup_id), mode="server", control="local")
    with pytest.raises(IntegrityError, match="CRC64 mismatch"):
        restore_redis(plan, confirm=True, server=RedisServer(url, redis_server.command))
    assert redis_server.client().get("k") == b"current"  # still running, untouched

    # a byte flipped in the stored file is caught by sha256 as for every artefact
    stored = folder / REDIS_ARTEFACT
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    report = verify_catalog(catalog, now=utcnow())
    assert [r.status for r in report.results] == [Status.CHECKSUM_MISMATCH]


def test_without_consent_nothing_changes(redis_server: RedisProcess, tmp_path: Path) -> None:
    redis_server.client().set("k", "v")
    catalog = Catalog([LocalStorage(tmp_path / "backups")])
    m = backup_redis(parse_redis_url(redis_server.url), catalog).manifest
    redis_server.client().set("k", "changed")
    url = parse_redis_url(redis_server.url)
    plan = plan_redis_restore(url, catalog.get(m.backup_id), mode="keys")
    with pytest.raises(ConsentRequired):
        restore_redis(plan, confirm=False)
    assert redis_server.client().get("k") == b"changed"
    with pytest.raises(ConfigError, match="--mode keys"):
        plan_redis_restore(url, catalog.get(m.backup_id), mode="server", control="none")


def test_acl_user_with_password(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "acl", password="default-s3cret").start()
    try:
        c = server.client()
        c.execute_command("ACL", "SETUSER", "backup", "on", ">b4ckup-pw", "~*", "&*", "+@all")
        c.execute_command("ACL", "SETUSER", "reader", "on", ">r3ader-pw", "~*", "+@read", "+info")
        c.set("k", "v")
        catalog = Catalog([LocalStorage(tmp_path / "backups")])
        url = f"redis://backup:b4ckup-pw@127.0.0.1:{server.port}/0"
        m = backup_redis(parse_redis_url(url), catalog).manifest
        assert m.counts == {"db0": 1}
        assert "b4ckup-pw" not in m.to_bytes().decode()
        assert m.source == f"redis://backup@127.0.0.1:{server.port}/0"

        with pytest.raises(PermanentError) as wrong:
            backup_redis(
                parse_redis_url(f"redis://backup:not-it@127.0.0.1:{server.port}/0"), catalog
            )
        assert "not-it" not in str(wrong.value)
        with pytest.raises(PermanentError, match=r"\+sync"):
            backup_redis(
                parse_redis_url(f"redis://reader:r3ader-pw@127.0.0.1:{server.port}/0"), catalog
            )
        assert len(catalog.list().backups) == 1  # failed runs leave no backup
    finally:
        server.stop()


def test_tls_url(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"],
            *["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            *["-keyout", str(key), "-out", str(cert)],
        ],
        check=True,
        capture_output=True,
    )
    server = RedisProcess(tmp_path / "tls")
    tls_port = server.port
    server.command = [
        *[a if a != str(tls_port) else "0" for a in server.command],  # no plain-text port
        *["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)],
        *["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--tls-replication", "yes"],
    ]
    proc = subprocess.Popen(server.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = parse_redis_url(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}")
        deadline = time.monotonic() + 10
        while not server.listening() and time.monotonic() < deadline:
            time.sleep(0.02)
        client = url.client()
        client.set("over", "tls")
        client.close()
        catalog = Catalog([LocalStorage(tmp_path / "backups")])
        m = backup_redis(url, catalog).manifest
        assert m.counts == {"db0": 1}
        assert m.source.startswith("rediss://")
        # the command starts the transfer before its imports (flows/entry.py): TLS there too
        r = run_dr(
            "redis", "backup", "--redis-url", url.raw, "--backup-dir", str(tmp_path / "backups")
        )
        assert r.returncode == 0, r.stderr
        assert "1 keys in 1 db(s)" in r.stdout
        assert verify_catalog(catalog, now=utcnow()).ok
    finally:
        proc.terminate()
        proc.wait()


def test_disk_based_transfer(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "disk", ["--repl-diskless-sync", "no"]).start()
    try:
        server.client().set("k", "v")
        catalog = Catalog([LocalStorage(tmp_path / "backups")])
        m = backup_redis(parse_redis_url(server.url), catalog).manifest
        assert m.dump_tool == "replication SYNC (disk)"
        assert verify_catalog(catalog, now=utcnow()).ok
    finally:
        server.stop()


def test_a_failing_write_ends_the_transfer_and_its_connection(
    redis_server: RedisProcess,
) -> None:
    c = redis_server.client()
    for i in range(16):
        c.set(f"big:{i}", os.urandom(1 << 20))
    written = [0]

    def write(chunk: bytes) -> None:  # a disk that fills up after 2 MiB
        written[0] += len(chunk)
        if written[0] > 2 << 20:
            raise PermanentError("cannot write: No space left on device")

    with pytest.raises(PermanentError, match="No space left"):
        snapshot(parse_redis_url(redis_server.url), write)
    assert [t for t in threading.enumerate() if t.name == "redis-sync"] == []
    deadline = time.monotonic() + 10
    while c.execute_command("CLIENT", "LIST", "TYPE", "replica"):
        assert time.monotonic() < deadline, "the SYNC connection is still open"
        time.sleep(0.02)
    assert c.dbsize() == 16  # the server carried on


def test_unreachable_server_is_transient(tmp_path: Path) -> None:
    from tasks.core.pgcluster import free_port

    catalog = Catalog([LocalStorage(tmp_path / "backups")])
    with pytest.raises(TransientError, match="unreachable"):
        backup_redis(parse_redis_url(f"redis://:pw@127.0.0.1:{free_port()}/0"), catalog)
    assert not catalog.list().backups
    assert not list((tmp_path / "backups").glob("*/*"))  # nothing half-written stays visible


@pytest.mark.parametrize(
    ("url", "message"),
    [("postgresql://h/db", "not a Redis URL"), ("redis://h:port/0", "invalid Redis URL")],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_redis_url(url)


def test_manifests_written_before_redis_support_still_parse(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    from tasks.core.manifest import _canonical

    catalog = Catalog([LocalStorage(tmp_path / "backups")])
    m = backup_redis(parse_redis_url(redis_server.url), catalog).manifest
    body = m.model_dump(mode="json")
    del body["redis"]  # as a manifest written before the field existed
    body["checksum"] = hashlib.sha256(_canonical(body)).hexdigest()
    old = Manifest.from_bytes(_canonical(body))
    assert old.redis is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('url = "redis://:pw@h:6379/0"', "contains a password"),
        ('control = "local"', "needs command"),
        ('control = "kubernetes"', "needs workload"),
    ],
)
def test_redis_config_is_checked(tmp_path: Path, section: str, message: str) -> None:
    from tasks.core.config import load_config

    path = tmp_path / "dr.toml"
    path.write_text(f"[redis]\n{section}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_redis_config_url_gets_its_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.core.config import load_config

    path = tmp_path / "dr.toml"
    path.write_text('[redis]\nurl = "rediss://dr@h:6380/1"\npassword_env = "DR_TEST_REDIS_PW"\n')
    rc = load_config(path).redis
    assert rc is not None
    assert rc.retention_days == 7
    with pytest.raises(ConfigError, match="DR_TEST_REDIS_PW is not set"):
        rc.resolve_url()
    monkeypatch.setenv("DR_TEST_REDIS_PW", "p@ss word")
    url = parse_redis_url(rc.resolve_url())
    assert str(url) == "rediss://dr@h:6380/1"
    assert url._kwargs()["password"] == "p@ss word"


def test_encrypted_backup_verifies_and_restores_with_its_key(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    from tasks.core.crypto import EncryptionKey

    key = EncryptionKey(os.urandom(32))
    redis_server.client().set("secret-data", "v")
    catalog = Catalog([LocalStorage(tmp_path / "backups")], key)
    m = backup_redis(parse_redis_url(redis_server.url), catalog).manifest
    assert m.artefacts[0].encryption is not None
    stored = (tmp_path / "backups" / m.backup_id / REDIS_ARTEFACT).read_bytes()
    assert b"secret-data" not in stored
    report = verify_catalog(catalog, now=utcnow())
    assert report.ok
    assert "CRC64 ok" in report.results[0].detail

    target = RedisProcess(tmp_path / "target").start()
    try:
        plan = plan_redis_restore(
            parse_redis_url(target.url), catalog.get(m.backup_id), mode="keys"
        )
        restore_redis(plan, confirm=True, encryption=key)
        assert target.client().get("secret-data") == b"v"
    finally:
        target.stop()
