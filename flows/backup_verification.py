"""Runbook "Daily Verification": the latest backup of every database, in every location, is read
back in full: manifest intact, sizes and sha256 match, the archive itself readable."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import State

from flows._ops import finish, record
from tasks import backup as backup_tasks
from tasks import pitr as pitr_tasks
from tasks.core.config import Config, load_config
from tasks.core.dburl import redact


@flow(name="backup-verification", log_prints=True)
def backup_verification(config: str = "") -> State[Any]:
    """Verify the latest backup of every database in every location.

    Args:
        config: path of the environment's dr.toml (empty: $DR_CONFIG or the local defaults)
    """
    cfg = load_config(config or None)
    started = datetime.now(UTC)
    report = backup_tasks.verify_backups(cfg, latest=True)
    rows = [
        {
            "backup": r.backup_id,
            "location": r.location,
            "status": r.status.value,
            "detail": r.detail,
        }
        for r in report.results
    ]
    failures = [
        f"{r.backup_id} in {r.location}: {r.status.value}"
        for r in report.results
        if r.status.value != "OK"
    ]
    if not report.results:
        failures.append("no backup to verify")
    if cfg.pitr is not None:  # pgBackRest: checksums of every file and WAL; a WAL gap alerts
        rows.append(_pgbackrest_verify(cfg, failures))
    record(
        cfg,
        "verification",
        cfg.environment,
        started,
        not failures,
        "; ".join(failures) or f"{len(rows)} copies verified",
    )
    return finish(cfg, "backup-verification", rows, failures)


def _pgbackrest_verify(cfg: Config, failures: list[str]) -> dict[str, Any]:
    target = f"pitr:{cfg.pitr.stanza if cfg.pitr else '-'}"
    try:
        v = pitr_tasks.pgbackrest_verify(cfg)
        problems = [f"WAL gap {g}" for g in v.gaps]
        problems += [ln.strip() for ln in v.lines if "status:" in ln and "ok" not in ln]
        problems += [ln.strip() for ln in v.lines if "backup:" in ln and "valid" not in ln]
        detail = "; ".join(problems) or "pgbackrest verify: ok, no WAL gap"
        ok = v.ok
    except Exception as exc:  # reported as a failed check, like a missing backup
        ok, detail = False, redact(str(exc)) or type(exc).__name__
    if not ok:
        failures.append(f"{target}: {detail}")
    return {"backup": target, "location": "pgbackrest", "status": "OK" if ok else "FAILED",
            "detail": detail}  # fmt: skip
