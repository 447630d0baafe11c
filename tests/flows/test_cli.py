"""The `dr` command as a user runs it: exit codes, one-line errors, consent, JSON, corruption."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.core.sampledata import create_sqlite_app_db
from tests.conftest import run_dr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    db = tmp_path / "app.db"
    create_sqlite_app_db(db, users=50)
    return db


def _backup(tmp_path: Path, db: Path, *extra: str) -> dict[str, object]:
    r = run_dr(
        "backup",
        "--database-url",
        f"sqlite:///{db}",
        "--backup-dir",
        str(tmp_path / "backups"),
        "--json",
        *extra,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _one_line_error(r: object) -> str:
    stderr = r.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("dr: error:") or stderr.startswith("Usage:") or "Error" in stderr
    return stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["backup"], 2, "no database: give --database-url"),
        (["backup", "--database-url", "mysql://h/db"], 2, "unsupported database URL scheme"),
        (["backup", "--database-url", "postgresql://h:notaport/db"], 2, "invalid PostgreSQL URL"),
        (["backup", "--database-url", "sqlite://"], 2, "SQLite URL needs a file path"),
        (["backup", "--database-url", "sqlite:///no/such/app.db"], 2, "does not exist"),
        (
            ["backup", "--latest", "--database-url", "sqlite:///x.db"],
            2,
            "--latest goes with --verify-only",
        ),
        (["restore", "--database-url", "sqlite:///x.db"], 2, "choose exactly one backup"),
        (
            ["restore", "--database-url", "sqlite:///x.db", "--latest", "--backup-id", "a"],
            2,
            "choose exactly one backup",
        ),
        (["restore", "--latest"], 2, "no target: give --database-url"),
        (
            ["restore", "--database-url", "sqlite:///x.db", "--before", "yesterday"],
            2,
            "cannot read 'yesterday' as a time",
        ),
        (
            ["restore", "--database-url", "sqlite:///x.db", "--before", "2999-01-01T00:00:00Z"],
            2,
            "is in the future",
        ),
        (
            ["restore", "--database-url", "sqlite:///x.db", "--backup-file", "/etc/hostname"],
            2,
            "is not inside a backup folder",
        ),
        (
            ["restore", "--database-url", "sqlite:///x.db", "--backup-id", "nosuch"],
            1,
            "no backup with id 'nosuch'",
        ),
        (["restore", "--database-url", "sqlite:///x.db", "--latest"], 1, "no good backup"),
        (["backup", "--verify-only"], 1, "no backups to verify"),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    r = run_dr(
        *args, "--backup-dir", str(tmp_path / "backups"), cwd=tmp_path, env={"DATABASE_URL": ""}
    )
    assert r.returncode == code, (r.stdout, r.stderr)
    assert message in _one_line_error(r)
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").iterdir())


def test_usage_errors_exit_2() -> None:
    r = run_dr("backup", "--retention-days", "0")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_password_never_printed(tmp_path: Path) -> None:
    r = run_dr(
        "backup",
        "--database-url",
        "postgresql://app:hunter2secret@127.0.0.1:1/db",
        "--backup-dir",
        str(tmp_path / "b"),
    )
    assert r.returncode in (1, 2)
    assert "hunter2secret" not in r.stdout + r.stderr
    assert "127.0.0.1" in _one_line_error(r)
    assert list((tmp_path / "b").iterdir()) == []  # a failed backup leaves no empty folder


def test_round_trip_env_vars_consent_and_json(tmp_path: Path, app_db: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{app_db}", "DR_BACKUP_DIR": str(tmp_path / "backups")}
    r = run_dr("backup", "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rows"] == 50 + 100 + 1000
    assert summary["failed"] == {}

    target = tmp_path / "restored.db"
    create_sqlite_app_db(target, users=3)
    before = _sha(target)
    r = run_dr("restore", "--database-url", f"sqlite:///{target}", "--latest", env=env)
    assert r.returncode == 2
    assert "restore plan (nothing changed)" in r.stdout
    assert summary["backup_id"] in r.stdout
    assert "add --confirm" in r.stderr
    assert _sha(target) == before  # refused: untouched

    r = run_dr(
        "restore",
        "--database-url",
        f"sqlite:///{target}",
        "--latest",
        "--source-database",
        "app.db",
        "--confirm",
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert {c["table"]: c["actual"] for c in result["counts"]} == {
        "users": 50,
        "bots": 100,
        "trades": 1000,
    }
    assert {c["counted_by"] for c in result["counts"]} == {"count"}  # a count(*) each
    assert _sha(target) != before
    kept = Path(result["kept_as"])
    assert kept.exists()
    assert _sha(kept) == before

    listing = json.loads(run_dr("restore", "--list", "--json", env=env).stdout)
    assert [b["backup_id"] for b in listing] == [summary["backup_id"]]
    assert listing[0]["locations"] == ["local"]
    assert listing[0]["engine"] == "sqlite"


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipped_artefact_byte_is_caught(tmp_path: Path, app_db: Path, where: str) -> None:
    summary = _backup(tmp_path, app_db)
    art = tmp_path / "backups" / str(summary["backup_id"]) / "database.sqlite.zst"
    data = bytearray(art.read_bytes())
    pos = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[pos] ^= 0x01
    art.write_bytes(bytes(data))

    r = run_dr("backup", "--verify-only", "--backup-dir", str(tmp_path / "backups"))
    assert r.returncode == 1
    assert "CHECKSUM_MISMATCH" in r.stdout

    target = tmp_path / "target.db"
    create_sqlite_app_db(target, users=2)
    before = _sha(target)
    backups = str(tmp_path / "backups")
    r = run_dr(
        "restore",
        "--database-url",
        f"sqlite:///{target}",
        "--latest",
        "--source-database",
        "app.db",
        "--confirm",
        "--backup-dir",
        backups,
    )
    assert r.returncode == 1  # verification marked it bad: --latest will not pick it
    assert "no good backup of database 'app.db'" in _one_line_error(r)
    r = run_dr(
        "restore",
        "--database-url",
        f"sqlite:///{target}",
        "--backup-id",
        str(summary["backup_id"]),
        "--confirm",
        "--backup-dir",
        backups,
    )
    assert r.returncode == 1  # named explicitly: the checksum still stops it
    assert "no intact copy" in _one_line_error(r)
    assert _sha(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "backups", "target.db"]


def test_flipped_manifest_byte_is_caught(tmp_path: Path, app_db: Path) -> None:
    summary = _backup(tmp_path, app_db)
    manifest = tmp_path / "backups" / str(summary["backup_id"]) / "manifest.json"
    raw = bytearray(manifest.read_bytes())
    i = raw.index(b'"trades": 1000') + len('"trades": 1')
    raw[i] ^= 0x01  # 1000 -> 1100: still valid JSON, still a number
    manifest.write_bytes(bytes(raw))
    r = run_dr("backup", "--verify-only", "--backup-dir", str(tmp_path / "backups"))
    assert r.returncode == 1
    assert "CHECKSUM_MISMATCH" in r.stdout
    r = run_dr("backup", "--verify-only", "--json", "--backup-dir", str(tmp_path / "backups"))
    [row] = json.loads(r.stdout)["results"]
    assert row["backup_id"] == summary["backup_id"]
    assert row["location"] == str(tmp_path / "backups")
    assert row["status"] == "CHECKSUM_MISMATCH"
    assert "checksum mismatch" in row["detail"]
    r = run_dr("restore", "--list", "--backup-dir", str(tmp_path / "backups"))
    assert "no backups in" in r.stdout
    assert "checksum mismatch" in r.stderr


def test_verify_latest_and_list_show_verification(tmp_path: Path, app_db: Path) -> None:
    first = _backup(tmp_path, app_db)
    second = _backup(tmp_path, app_db)
    r = run_dr(
        "backup", "--verify-only", "--latest", "--json", "--backup-dir", str(tmp_path / "backups")
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [x["backup_id"] for x in report["results"]] == [second["backup_id"]]
    listing = json.loads(
        run_dr("restore", "--list", "--json", "--backup-dir", str(tmp_path / "backups")).stdout
    )
    by_id = {b["backup_id"]: b for b in listing}
    assert by_id[second["backup_id"]]["verified"]["ok"] is True
    assert by_id[first["backup_id"]]["verified"] is None


def test_restore_by_backup_file_and_before(tmp_path: Path, app_db: Path) -> None:
    first = _backup(tmp_path, app_db)
    create_sqlite_app_db(app_db, users=60)
    second = _backup(tmp_path, app_db)
    target = tmp_path / "t.db"
    art = tmp_path / "backups" / str(first["backup_id"]) / "database.sqlite.zst"
    r = run_dr(
        "restore",
        "--database-url",
        f"sqlite:///{target}",
        "--backup-file",
        str(art),
        "--confirm",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backup_id"] == first["backup_id"]

    r = run_dr(
        "restore",
        "--database-url",
        f"sqlite:///{target}",
        "--before",
        str(second["consistent_at"]),
        "--source-database",
        "app.db",
        "--confirm",
        "--drop-existing",
        "--json",
        "--backup-dir",
        str(tmp_path / "backups"),
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["backup_id"] == first["backup_id"]
    assert out["kept_as"] is None


def test_scenario_needs_consent_or_a_server(tmp_path: Path) -> None:
    r = run_dr("scenario", "database-corruption", env={"PREFECT_API_URL": ""})
    assert r.returncode == 2
    assert "pauses for approval in the Prefect UI" in _one_line_error(r)
    r = run_dr("scenario", "volcano", "--confirm")
    assert r.returncode == 2
    assert "unknown scenario 'volcano'" in _one_line_error(r)
    bad = tmp_path / "dr.toml"
    bad.write_text("[platform]\nkind = 'nomad'\n")
    r = run_dr("scenario", "data-loss", "--config", str(bad), "--dry-run")
    assert r.returncode == 2
    assert "platform.kind" in _one_line_error(r)
    r = run_dr("scenario", "data-loss", "--dry-run", "--param", "novalue")
    assert r.returncode == 2
    assert "expected key=value" in _one_line_error(r)
    r = run_dr("scenario", "data-loss", "--dry-run")
    assert r.returncode == 2
    assert "missing a required argument: 'deleted_at'" in _one_line_error(r)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    r = run_dr("demo", "--dir", str(tmp_path / "mine"))
    assert r.returncode == 2
    assert "not a dr demo directory" in _one_line_error(r)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


@pytest.mark.slow
def test_demo_recovers_the_demo_environment_twice(tmp_path: Path) -> None:
    for _ in range(2):
        r = run_dr("demo", cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "# database-corruption: recovered" in r.stdout
        assert "/health says HTTP 503" in r.stdout  # it really was broken before
        assert "| RTO (start → healthy) | 60 min |" in r.stdout
    assert (tmp_path / "dr-demo" / "report.md").read_text().startswith("# database-corruption")
    cluster = r.stdout.split("1. demo database postgresql://postgres@127.0.0.1:", 1)
    if len(cluster) == 2:  # PostgreSQL was used: its throwaway cluster must be gone
        port = int(cluster[1].split("/", 1)[0])
        probe = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)], check=False)
        assert probe.returncode != 0


def test_sqlite_restoring_twice_keeps_every_previous_copy(tmp_path: Path, app_db: Path) -> None:
    summary = _backup(tmp_path, app_db)
    target = tmp_path / "t.db"
    kept = []
    for users in (3, 4):
        create_sqlite_app_db(target, users=users)
        r = run_dr(
            "restore",
            "--database-url",
            f"sqlite:///{target}",
            "--backup-id",
            str(summary["backup_id"]),
            "--confirm",
            "--json",
            "--backup-dir",
            str(tmp_path / "backups"),
        )
        assert r.returncode == 0, r.stderr
        kept.append(Path(json.loads(r.stdout)["kept_as"]))
    assert kept[1] == kept[0].with_name(kept[0].name + "_2")
    assert [len(p.read_bytes()) > 0 for p in kept] == [True, True]
    assert _sha(kept[0]) != _sha(kept[1])  # 3 users vs 4 users: both versions survive


@pytest.mark.slow
def test_scenario_dry_run_prints_the_plan(tmp_path: Path, app_db: Path) -> None:
    summary = _backup(tmp_path, app_db)
    config = tmp_path / "dr.toml"
    config.write_text(f'[[databases]]\nname = "main"\nurl = "sqlite:///{app_db}"\n')
    r = run_dr(
        "scenario",
        "data-loss",
        "--config",
        str(config),
        "--dry-run",
        "--param",
        f"deleted_at={datetime.now(UTC).isoformat()}",
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "# data-loss: dry run (nothing changed)" in r.stdout
    assert str(summary["backup_id"]) in r.stdout


def test_a_backup_dated_ahead_of_the_clock_is_pointed_out_when_chosen_by_time(
    tmp_path: Path,
) -> None:
    """A backup host whose clock ran ahead makes its backup the "latest" until the clocks
    meet: the restore says so before anything happens, and names the way out."""
    from datetime import timedelta

    from tasks.core.storage.local import LocalStorage
    from tests.core.fake_backups import put_backup

    backups = LocalStorage(tmp_path / "backups")
    now = datetime.now(UTC)
    put_backup([backups], "app.db", now - timedelta(hours=5), engine="sqlite")
    ahead = put_backup([backups], "app.db", now + timedelta(hours=2), engine="sqlite")
    target = f"sqlite:///{tmp_path / 'app.db'}"
    common = ["--database-url", target, "--backup-dir", str(tmp_path / "backups")]

    r = run_dr("restore", *common, "--latest")  # the plan only: nothing changes

    assert r.returncode == 2
    warning = [ln for ln in r.stderr.splitlines() if ln.startswith("dr: warning:")]
    assert len(warning) == 1, r.stderr
    assert ahead in warning[0]
    assert "h ahead of this machine's clock (clock skew?)" in warning[0]
    assert "--backup-id" in warning[0]
    assert ahead in r.stdout  # still the one --latest picks: by time, as documented

    r = run_dr("restore", *common, "--backup-id", ahead)
    assert r.returncode == 2
    assert "dr: warning:" not in r.stderr  # named on purpose
