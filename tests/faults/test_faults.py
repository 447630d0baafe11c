"""One real fault per row of the reliability matrix (docs/reliability.md): real `dr` processes,
real PostgreSQL clusters, moto S3 over HTTP, real signals. Each test records what a user saw
(``fault.outcome``) before asserting it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import psycopg
import pytest

from tasks.core import retention
from tasks.core.backup import backup_database
from tasks.core.catalog import Catalog, Verification
from tasks.core.dburl import parse_database_url
from tasks.core.engines import sqlite
from tasks.core.pgcluster import PgCluster
from tasks.core.sampledata import create_sqlite_app_db
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.s3 import S3Storage
from tests.conftest import DR, psql, run_dr
from tests.faults.conftest import BIG_ROWS, Fault, ResettingProxy, wait_for

pytestmark = pytest.mark.timeout(180)


def _popen(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [DR, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def _one_error_line(stderr: str) -> str:
    """A failure is one line on stderr, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dr: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _databases(pg: PgCluster, prefix: str) -> list[str]:
    out = psql(pg.url, f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' ORDER BY 1")
    return out.split() if out else []


def _active(pg: PgCluster, app: str, datname_like: str) -> list[int]:
    out = psql(
        pg.url,
        "SELECT pid FROM pg_stat_activity WHERE application_name = "
        f"'{app}' AND datname LIKE '{datname_like}' AND state = 'active'",
    )
    return [int(p) for p in out.split()]


def _descendants(pid: int, comm: str) -> list[int]:
    """The processes named ``comm`` below ``pid`` (read from /proc)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
        except OSError:
            continue  # gone while we looked
        own, _, name = head.partition(" (")
        children.setdefault(int(rest.split()[1]), []).append((int(own), name))
    found, todo = [], [pid]
    while todo:
        for child, name in children.get(todo.pop(), []):
            todo.append(child)
            if name == comm:
                found.append(child)
    return found


def _terminate_mid_copy(
    pg: PgCluster, proc: subprocess.Popen[str], apps: tuple[str, ...], db_like: str
) -> None:
    """Terminate every server session of the tools ``apps`` (run by ``proc``) while one of them
    is inside a COPY. The tools are frozen (SIGSTOP) while we look and terminate, so the fault
    always lands mid-transfer, never just after the last statement; they then go on (SIGCONT)
    and meet the dead connection."""
    names = ", ".join(f"'{a}'" for a in apps)

    def attempt() -> bool:
        tools = [pid for app in apps for pid in _descendants(proc.pid, app)]
        if not tools:
            return False
        for tool in tools:
            with contextlib.suppress(ProcessLookupError):  # it ended since we looked
                os.kill(tool, signal.SIGSTOP)
        try:
            sessions = (
                f"FROM pg_stat_activity WHERE application_name IN ({names}) "
                f"AND datname LIKE '{db_like}'"
            )
            copying = f"SELECT 1 {sessions} AND state = 'active' AND query ILIKE 'COPY %'"
            if not psql(pg.url, copying):
                return False
            psql(pg.url, f"SELECT pg_terminate_backend(pid, 10000) {sessions}")
            return True
        finally:
            for tool in tools:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(tool, signal.SIGCONT)

    def check() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{names} finished before the fault could be injected")
        return attempt()

    wait_for(f"{names} inside a COPY", check)


def _marker(url: str) -> str:
    return psql(url, "SELECT v FROM marker")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ---- dr killed (SIGKILL) half-way through the upload --------------------------------------------


@pytest.mark.fault("dr process killed (SIGKILL)", "backup, half-way through the upload")
def test_sigkill_half_way_through_the_upload(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path, bucket: str
) -> None:
    url = pg.url_for(clone(big_template))
    backups = tmp_path / "backups"
    proc = _popen(
        "backup", "--database-url", url, "--backup-dir", str(backups), "--s3-bucket", bucket
    )
    s3 = boto3.client("s3")

    def part_uploaded() -> bool:
        for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            parts = s3.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            if parts.get("Parts"):
                return True
        return False

    wait_for("a first S3 part of the backup", part_uploaded)
    proc.send_signal(signal.SIGKILL)
    fault.injected()
    proc.communicate()

    catalog = Catalog([LocalStorage(backups), S3Storage(bucket)])
    listed = run_dr("restore", "--list", "--backup-dir", str(backups), "--s3-bucket", bucket)
    leftovers = _files(backups)
    # a later run (its clock past the sweep grace) sweeps the leftovers and takes a good backup
    later = datetime.now(UTC) + timedelta(hours=7)
    result = backup_database(parse_database_url(url), catalog, now=lambda: later)
    after = catalog.list().backups
    fault.outcome(
        reported_ok=bool(listed.stdout.strip()) and not listed.stdout.startswith("no backups"),
        truly_ok=False,
        data_intact=result.complete and [e.backup_id for e in after] == [result.manifest.backup_id],
    )
    assert proc.returncode == -signal.SIGKILL
    assert listed.returncode == 0
    assert listed.stdout.startswith("no backups in")  # the killed backup does not exist
    assert leftovers  # ... though its partial artefact is on disk
    assert f"{backups}/{leftovers[0].parent.name}" in result.swept
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert result.complete
    assert [e.backup_id for e in after] == [result.manifest.backup_id]
    assert after[0].location_names() == ["local", "s3"]
    assert after[0].manifest.counts["public.big"] == BIG_ROWS


# ---- S3 down / connection reset ---------------------------------------------------------------


def _is_artefact(method: bytes) -> object:
    return lambda data: (
        data.startswith(method + b" ") and b"database.pgdump.zst" in data.split(b"\r\n", 1)[0]
    )


@pytest.mark.fault("S3 endpoint down / connection reset", "upload")
def test_s3_connection_reset_during_upload(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path, bucket: str,
    resetting_proxy,
) -> None:  # fmt: skip
    url = pg.url_for(clone(big_template))
    backups = tmp_path / "backups"
    proxy: ResettingProxy = resetting_proxy(_is_artefact(b"PUT"))  # every part upload is reset
    r = run_dr(
        "backup", "--database-url", url, "--backup-dir", str(backups), "--s3-bucket", bucket,
        env={"AWS_ENDPOINT_URL": proxy.endpoint},
    )  # fmt: skip
    fault.injected()
    listing = run_dr(
        "restore", "--list", "--json", "--backup-dir", str(backups), "--s3-bucket", bucket
    )
    backups_listed = json.loads(listing.stdout) if listing.returncode == 0 else []
    verify = run_dr("backup", "--verify-only", "--backup-dir", str(backups))
    s3_keys = [
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])
    ]
    fault.outcome(
        reported_ok=r.returncode == 0,
        truly_ok=False,
        data_intact=verify.returncode == 0 and len(backups_listed) == 1,
    )
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert f"backup not stored in s3://{bucket}/database-backups" in line
    assert "S3 unreachable" in line
    assert proxy.resets >= 2  # botocore retried (with backoff) before giving up
    assert r.stdout.startswith("backup ")  # ... and the local copy was committed
    assert [b["locations"] for b in backups_listed] == [["local"]]  # listed as local-only
    assert verify.returncode == 0, verify.stdout + verify.stderr  # intact
    assert not [k for k in s3_keys if k.endswith("manifest.json")]  # nothing committed in S3


@pytest.mark.fault("S3 endpoint down / connection reset", "download")
def test_s3_connection_reset_during_download(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path, bucket: str,
    resetting_proxy,
) -> None:  # fmt: skip
    db = clone(big_template)
    url = pg.url_for(db)
    backups = tmp_path / "backups"
    m = backup_database(
        parse_database_url(url), Catalog([LocalStorage(backups), S3Storage(bucket)])
    ).manifest
    (backups / m.artefacts[0].key).unlink()  # the local copy is lost: S3 is needed
    psql(url, "UPDATE marker SET v = 'after the backup'")
    proxy: ResettingProxy = resetting_proxy(_is_artefact(b"GET"))
    r = run_dr(
        "restore", "--database-url", url, "--latest", "--confirm", "--backup-dir", str(backups),
        "--s3-bucket", bucket, env={"AWS_ENDPOINT_URL": proxy.endpoint},
    )  # fmt: skip
    fault.injected()
    live = _marker(url)
    fault.outcome(
        reported_ok=r.returncode == 0, truly_ok=False, data_intact=live == "after the backup"
    )
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "S3 unreachable while trying to read" in line
    assert proxy.resets >= 2  # retried before giving up
    assert live == "after the backup"  # production untouched
    assert _databases(pg, db) == [db]  # no side copy, no kept copy
    # S3 back: the same command succeeds
    again = run_dr(
        "restore", "--database-url", url, "--latest", "--confirm", "--drop-existing",
        "--backup-dir", str(backups), "--s3-bucket", bucket,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert _marker(url) == "original"


# ---- S3 object corrupted or truncated -----------------------------------------------------------


@pytest.mark.fault("S3 object corrupted or truncated", "restore from S3")
@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_damaged_s3_object_is_detected_before_anything_is_restored(
    fault: Fault, pg: PgCluster, dbname: str, tmp_path: Path, bucket: str, damage: str
) -> None:
    url = pg.url_for(dbname)
    psql(url, "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('original');")
    psql(
        url, "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g"
    )
    backups = tmp_path / "backups"
    m = backup_database(
        parse_database_url(url), Catalog([LocalStorage(backups), S3Storage(bucket)])
    ).manifest
    key = m.artefacts[0].key
    (backups / key).unlink()
    s3 = boto3.client("s3")
    body = bytearray(s3.get_object(Bucket=bucket, Key=f"database-backups/{key}")["Body"].read())
    if damage == "corrupted":
        body[len(body) // 2] ^= 0x01  # one bit, same size
    else:
        del body[len(body) // 2 :]
    s3.put_object(Bucket=bucket, Key=f"database-backups/{key}", Body=bytes(body))
    fault.injected()
    psql(url, "UPDATE marker SET v = 'after the backup'")
    r = run_dr(
        "restore", "--database-url", url, "--latest", "--confirm", "--backup-dir", str(backups),
        "--s3-bucket", bucket,
    )  # fmt: skip
    live = _marker(url)
    fault.outcome(
        reported_ok=r.returncode == 0, truly_ok=False, data_intact=live == "after the backup"
    )
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert f"no intact copy of backup {m.backup_id}" in line
    assert ("sha256 mismatch" if damage == "corrupted" else "truncated") in line
    assert live == "after the backup"
    assert _databases(pg, dbname) == [dbname]  # no side database was ever left


# ---- database connection terminated -------------------------------------------------------------


@pytest.mark.fault("database connection terminated (pg_terminate_backend)", "dump")
def test_connection_terminated_during_the_dump(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path
) -> None:
    db = clone(big_template)
    backups = tmp_path / "backups"
    proc = _popen("backup", "--database-url", pg.url_for(db), "--backup-dir", str(backups))
    _terminate_mid_copy(pg, proc, ("pg_dump",), db)
    fault.injected()
    _, stderr = proc.communicate(timeout=120)
    listed = Catalog([LocalStorage(backups)]).list().backups
    fault.outcome(reported_ok=proc.returncode == 0, truly_ok=False, data_intact=True)
    assert proc.returncode == 1
    line = _one_error_line(stderr)
    assert "pg_dump failed" in line or "terminating connection" in line
    assert listed == []  # no manifest: no backup
    assert _files(backups) == []  # and nothing left behind


@pytest.mark.fault(
    "database connection terminated (pg_terminate_backend)", "restore into the side database"
)
def test_connection_terminated_during_the_restore_into_the_side_database(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path
) -> None:
    db = clone(big_template)
    url = pg.url_for(db)
    backups = tmp_path / "backups"
    backup_database(parse_database_url(url), Catalog([LocalStorage(backups)]))
    psql(url, "UPDATE marker SET v = 'after the backup'")
    proc = _popen(
        "restore", "--database-url", url, "--latest", "--confirm", "--backup-dir", str(backups)
    )
    # the big table loads through pg_restore | psql during the fetch, the rest with pg_restore
    _terminate_mid_copy(pg, proc, ("pg_restore", "psql"), f"{db}_restore_%")
    fault.injected()
    _, stderr = proc.communicate(timeout=120)
    live = _marker(url)
    fault.outcome(
        reported_ok=proc.returncode == 0, truly_ok=False, data_intact=live == "after the backup"
    )
    assert proc.returncode == 1
    line = _one_error_line(stderr)
    assert re.search(r"(pg_restore|psql) \(.*\) into \S+ failed", line), line
    assert live == "after the backup"  # production untouched
    assert _databases(pg, db) == [db]  # side database cleaned up


# ---- target server stopped during the switch-over -----------------------------------------------


@pytest.mark.fault("target server stopped", "restore switch-over")
def test_server_stopped_during_the_switch_over(fault: Fault, tmp_path: Path) -> None:
    with PgCluster() as cluster:
        db = "app"
        psql(cluster.url, f"CREATE DATABASE {db}")
        url = cluster.url_for(db)
        psql(url, "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('original');")
        psql(url, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 50000) g")
        backups = tmp_path / "backups"
        backup_database(parse_database_url(url), Catalog([LocalStorage(backups)]))
        psql(url, "UPDATE marker SET v = 'after the backup'")

        proc = _popen(
            "restore", "--database-url", url, "--latest", "--confirm", "--backup-dir", str(backups)
        )
        side = wait_for("the side database", lambda: _databases(cluster, f"{db}_restore_"))[0]
        # hold the side copy's lock so that the switch transaction stops half-way, then crash
        blocker = psycopg.connect(cluster.url)
        blocker.execute(f"COMMENT ON DATABASE \"{side}\" IS 'held by the fault test'")
        wait_for(
            "the switch-over waiting inside its transaction",
            lambda: psql(
                cluster.url,
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'ALTER DATABASE%RENAME%'",
            ),
        )
        subprocess.run(
            [*(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []),
             str(cluster.bin / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate", "-w", "stop"],
            check=True, capture_output=True,
        )  # fmt: skip
        fault.injected()
        _, stderr = proc.communicate(timeout=120)
        blocker.close()
        cluster.start()  # the server comes back (a supervisor, or on-call)
        live = _marker(url)
        allowed = psql(cluster.url, f"SELECT datallowconn FROM pg_database WHERE datname = '{db}'")
        fault.outcome(
            reported_ok=proc.returncode == 0, truly_ok=False, data_intact=live == "after the backup"
        )
        assert proc.returncode == 1
        line = _one_error_line(stderr)
        assert "lost during the switch-over, before it committed" in line
        assert f"the previous {db} is live" in line
        assert f"the verified restored copy is {side}" in line
        assert f"the side copy {side} could not be removed" in line  # the server was down
        assert live == "after the backup"  # the old database is there, under its name ...
        assert allowed == "t"  # ... and open to connections
        assert _databases(cluster, db) == sorted([db, side])  # the side copy, as the line says
        again = run_dr(
            "restore", "--database-url", url, "--latest", "--confirm", "--backup-dir", str(backups)
        )
        assert again.returncode == 0, again.stderr  # running it again finishes the job
        assert _marker(url) == "original"


# ---- disk full on the backup dir ----------------------------------------------------------------


def _fsize_limit(limit: int) -> object:
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.fault("disk full on the backup dir (file-size limit)", "backup")
def test_disk_full_during_the_backup(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path, bucket: str
) -> None:
    url = pg.url_for(clone(big_template))
    backups = tmp_path / "backups"
    proc = _popen(
        "backup", "--database-url", url, "--backup-dir", str(backups), "--s3-bucket", bucket,
        preexec_fn=_fsize_limit(2 << 20),  # writes past 2 MiB fail with EFBIG, as on a full disk
    )  # fmt: skip
    fault.injected()
    _, stderr = proc.communicate(timeout=120)
    both = Catalog([LocalStorage(backups), S3Storage(bucket)]).list().backups
    s3_keys = [o.key for o in S3Storage(bucket).list()]
    fault.outcome(reported_ok=proc.returncode == 0, truly_ok=False, data_intact=True)
    assert proc.returncode == 1
    line = _one_error_line(stderr)
    assert f"backup not stored in {backups}: cannot write {backups}/" in line
    assert "File too large" in line
    assert f"not committed in s3://{bucket}/database-backups either" in line
    assert both == []  # no partial backup listed, in the full backup dir nor in S3
    assert _files(backups) == []  # no partial artefact left in the backup dir
    assert s3_keys == []  # the S3 upload was aborted: nothing left to sweep
    assert boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # the source was only read: a backup with room to write succeeds at once
    again = run_dr(
        "backup", "--database-url", url, "--backup-dir", str(backups), "--s3-bucket", bucket
    )
    assert again.returncode == 0, again.stderr
    assert [
        e.location_names()
        for e in Catalog([LocalStorage(backups), S3Storage(bucket)]).list().backups
    ] == [["local", "s3"]]


# ---- two restores of the same target at once ---------------------------------------------------


@pytest.mark.fault("two restores of the same target at once", "restore")
def test_second_restore_of_the_same_target_refuses(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path
) -> None:
    db = clone(big_template)
    url = pg.url_for(db)
    backups = tmp_path / "backups"
    backup_database(parse_database_url(url), Catalog([LocalStorage(backups)]))
    psql(url, "UPDATE marker SET v = 'after the backup'")
    args = ("restore", "--database-url", url, "--latest", "--confirm", "--backup-dir", str(backups))
    first = _popen(*args)
    wait_for(
        "the first restore's lock",
        lambda: psql(pg.url, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"),
    )
    first.send_signal(signal.SIGSTOP)  # the first restore is mid-way, holding its lock
    try:
        second = run_dr(*args)
        fault.injected()
        during = _databases(pg, db)
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate(timeout=120)
    kept = [d for d in _databases(pg, db) if "_pre_restore_" in d]
    fault.outcome(
        reported_ok=second.returncode == 0,
        truly_ok=False,
        data_intact=first.returncode == 0 and _marker(url) == "original" and len(kept) == 1,
    )
    assert second.returncode == 1
    line = _one_error_line(second.stderr)
    assert f"another restore of database {db} is running (session " in line
    assert "nothing was changed" in line
    assert not [d for d in during if "_pre_restore_" in d]  # the second switched nothing
    assert first.returncode == 0, first_err
    assert _marker(url) == "original"
    assert len(kept) == 1  # exactly one switch-over happened


@pytest.mark.fault("two restores of the same target at once", "restore (SQLite target)")
def test_second_restore_of_the_same_sqlite_file_refuses(fault: Fault, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_sqlite_app_db(db, users=5)
    backups = tmp_path / "backups"
    backup_database(parse_database_url(f"sqlite:///{db}"), Catalog([LocalStorage(backups)]))
    before = db.read_bytes()
    with sqlite.restore_lock(db):  # held the way a running restore holds it
        r = run_dr(
            "restore", "--database-url", f"sqlite:///{db}", "--latest", "--confirm",
            "--backup-dir", str(backups),
        )  # fmt: skip
        fault.injected()
    fault.outcome(
        reported_ok=r.returncode == 0, truly_ok=False, data_intact=db.read_bytes() == before
    )
    assert r.returncode == 1
    assert "another restore of database" in _one_error_line(r.stderr)
    assert db.read_bytes() == before
    assert not list(tmp_path.glob("app.db.pre_restore_*"))


# ---- a backup during a restore of the same database ---------------------------------------------


@pytest.mark.fault("backup during a restore of the same database", "both")
def test_backup_running_across_the_switch_over_fails_cleanly(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path
) -> None:
    db = clone(big_template)
    url = pg.url_for(db)
    backups = tmp_path / "backups"
    catalog = Catalog([LocalStorage(backups)])
    restored = backup_database(parse_database_url(url), catalog).manifest
    psql(url, "UPDATE marker SET v = 'after the backup'")
    backup = _popen("backup", "--database-url", url, "--backup-dir", str(backups))
    wait_for("pg_dump at work", lambda: _active(pg, "pg_dump", db))
    backup.send_signal(signal.SIGSTOP)  # the backup stays in the middle of its dump
    try:
        r = run_dr(
            "restore", "--database-url", url, "--backup-id", restored.backup_id, "--confirm",
            "--backup-dir", str(backups),
        )  # fmt: skip
        fault.injected()
    finally:
        backup.send_signal(signal.SIGCONT)
    _, backup_err = backup.communicate(timeout=120)
    listed = [e.backup_id for e in catalog.list().backups]
    after = backup_database(parse_database_url(url), catalog).manifest
    fault.outcome(
        reported_ok=backup.returncode == 0,
        truly_ok=False,
        data_intact=r.returncode == 0 and _marker(url) == "original",
    )
    assert r.returncode == 0, r.stderr  # the restore wins
    assert _marker(url) == "original"
    assert backup.returncode == 1  # the backup it cut off fails, and says so
    line = _one_error_line(backup_err)
    assert "terminating connection" in line or "pg_dump failed" in line
    assert listed == [restored.backup_id]  # no half backup listed
    assert after.counts == restored.counts  # the next backup sees the restored data


# ---- clock skew / a backup from the future ------------------------------------------------------


@pytest.mark.fault("clock skew / a backup id from the future", "list, retention")
def test_clock_skew_never_costs_the_newest_good_backup(fault: Fault, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_sqlite_app_db(db, users=5)
    url = parse_database_url(f"sqlite:///{db}")
    backups = tmp_path / "backups"
    catalog = Catalog([LocalStorage(backups)])
    t = datetime.now(UTC)

    def take(at: datetime, **kw: int) -> str:
        return backup_database(url, catalog, now=lambda: at, **kw).manifest.backup_id

    old = [take(t - timedelta(days=d)) for d in (3, 2)]
    future = take(t + timedelta(days=5))  # taken on a host whose clock ran 5 days ahead
    fault.injected()
    listing = run_dr("restore", "--list", "--json", "--backup-dir", str(backups))
    listed = [b["backup_id"] for b in json.loads(listing.stdout)]
    # a correct clock again: retention with a 1-day window
    now_id = take(t, retention_days=1)
    kept_1 = {e.backup_id for e in catalog.list().backups}
    # the clock jumps 60 days ahead; the newest backup failed its verification
    catalog.record_verification(catalog.locations[0], now_id, Verification(t, False, "damaged"))
    skewed = t + timedelta(days=60)
    entries = catalog.list().backups
    decisions = retention.plan(
        retention.candidates(entries), retention.AgePolicy(timedelta(days=1)), skewed
    )
    retention.apply(catalog, entries, decisions, now=skewed)
    kept_2 = {e.backup_id for e in catalog.list().backups}
    fault.outcome(
        reported_ok=True, truly_ok=True, data_intact=future in kept_2 and now_id in kept_1
    )
    assert listing.returncode == 0
    assert set(listed) == {*old, future}
    assert listed[0] == future
    assert kept_1 == {future, now_id}  # the future one is kept, and so is the newest good
    reasons = {d.backup_id: d.reason for d in decisions}
    assert kept_2 == {future}  # the newest *good* backup survives the jump; the bad one goes
    assert reasons[future] == "newest good backup: always kept"


# ---- the application never becomes healthy -----------------------------------------------------


@pytest.mark.fault("application never becomes healthy", "scenario")
def test_application_never_healthy(fault: Fault, app_env) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flows.database_corruption import database_corruption
    from tests.flows.conftest import artifacts

    class Sick(BaseHTTPRequestHandler):  # up, but answers 503 for ever
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sick)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        app_env.backup()
        app_env.sql("DELETE FROM trades")
        app_env.write_config(
            health=f'[[health]]\nurl = "http://127.0.0.1:{server.server_address[1]}/health"\n',
            top=f'environment = "test-{app_env.dbname}"\nhealth_deadline_s = 3\n',
        )
        fault.injected()
        state = database_corruption(config=str(app_env.config), confirm=True, return_state=True)
    finally:
        server.shutdown()
        server.server_close()
    report = artifacts(state)["database-corruption-report"]
    trades = app_env.sql("SELECT count(*) FROM trades")
    fault.outcome(reported_ok=state.is_completed(), truly_ok=False, data_intact=trades == "1000")
    assert state.is_failed()
    assert "did not become healthy within 3s" in state.message
    assert "| Health check | ❌ failed |" in report
    assert "503" in report
    assert "| RTO (start → healthy) | 60 min | - | not reached |" in report
    # the documented state: database restored and live, workloads running at their scale
    assert trades == "1000"
    assert app_env.replicas() == 3
    assert "backend 3/3 ready" in report
    assert "previous database kept as" in report
