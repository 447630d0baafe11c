"""The four disaster scenarios end to end: real PostgreSQL, moto S3/Route53, the Kubernetes API
emulator driven by the real client, the demo app as the health endpoint, a webhook listener."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import psycopg
import pytest

from flows.data_loss import data_loss
from flows.database_corruption import database_corruption
from flows.infrastructure_loss import infrastructure_loss
from flows.security_breach import security_breach
from tasks.core.audit import AuditRecord, read_audit
from tasks.core.config import load_config
from tasks.core.environment import build_catalog, build_platform
from tasks.core.pgcluster import PgCluster, free_port
from tasks.core.platform import ScaleState
from tests.flows.conftest import AppEnv, artifacts, logs, resume_when_paused

pytestmark = pytest.mark.timeout(240)


def _corrupt(env: AppEnv) -> None:
    env.sql("DELETE FROM trades; DELETE FROM bots WHERE id > 10;")


def _audit(env: AppEnv) -> list[AuditRecord]:
    return read_audit(build_catalog(load_config(env.config)).locations)[0]


def _scale_writes(env: AppEnv) -> list[int]:
    """Replica values the flow wrote through the scale subresource, in order."""
    return [
        int(r.body["spec"]["replicas"])
        for r in env.k8s.state.requests
        if r.method in ("PATCH", "PUT") and r.path.endswith("/scale")
    ]


def test_database_corruption_end_to_end(app_env: AppEnv) -> None:
    backup_id = app_env.backup()
    _corrupt(app_env)
    state = database_corruption(config=str(app_env.config), confirm=True, return_state=True)
    assert state.is_completed(), state.message
    assert app_env.sql("SELECT count(*) FROM trades") == "1000"
    assert app_env.sql("SELECT count(*) FROM bots") == "100"
    assert _scale_writes(app_env) == [0, 3]  # stopped, then back to exactly what it had
    assert app_env.replicas() == 3

    summary = state.result()
    assert summary["rto_s"] > 0
    assert summary["rpo_s"] >= 0
    arts = artifacts(state)
    report = arts["database-corruption-report"]
    assert report.startswith("# database-corruption: recovered")
    assert backup_id in report
    assert "| RTO (start → healthy) | 60 min |" in report
    assert "**met**" in report
    assert "amcheck: ok" in report  # deleted rows are not page corruption: reported as such
    assert "- [ ] Root cause analysis: document the incident" in report
    checklist = {row["item"]: row["state"] for row in arts["database-corruption-checklist"]}
    assert checklist["Stop further damage"] == "done"
    assert checklist["Restore database"] == "done"
    assert checklist["Verify services"] == "done"
    assert checklist["Update DNS (if needed)"] == "not part of this scenario"
    assert arts["restore-progress"] == 100.0
    audit = _audit(app_env)
    assert [(r.action, r.ok) for r in audit] == [
        ("scale", True),
        ("restore", True),
        ("scale", True),
    ]
    assert audit[1].backup_id == backup_id
    assert audit[1].approved_by.startswith("database-corruption: ")
    assert {r.flow_run for r in audit} == {str(state.state_details.flow_run_id)}
    assert app_env.webhook.subjects()[0].endswith("database-corruption started")
    assert "database-corruption: recovered" in app_env.webhook.subjects()[-1]
    kept = app_env.sql(
        f"SELECT datname FROM pg_database WHERE datname LIKE '{app_env.dbname}_pre_restore_%'"
    )
    assert kept  # the corrupted database is kept for the post-mortem


def test_approval_approved_in_the_ui(app_env: AppEnv) -> None:
    app_env.backup()
    _corrupt(app_env)
    resumer = resume_when_paused({"approved": True, "approver": "oncall-alice", "ticket": "INC-7"})
    state = database_corruption(config=str(app_env.config), return_state=True)
    resumer.join()
    assert state.is_completed(), state.message
    assert app_env.sql("SELECT count(*) FROM trades") == "1000"
    report = artifacts(state)["database-corruption-report"]
    assert "approved by oncall-alice (INC-7)" in report
    assert any("approval needed" in s for s in app_env.webhook.subjects())


def test_approval_rejected_changes_nothing(app_env: AppEnv) -> None:
    app_env.backup()
    _corrupt(app_env)
    resumer = resume_when_paused({"approved": False, "approver": "oncall-bob"})
    state = database_corruption(config=str(app_env.config), return_state=True)
    resumer.join()
    assert state.is_cancelled()
    assert "rejected by oncall-bob" in state.message
    assert app_env.sql("SELECT count(*) FROM trades") == "0"  # nothing restored
    assert _scale_writes(app_env) == [0, 3]
    assert app_env.replicas() == 3
    assert (
        app_env.sql(f"SELECT count(*) FROM pg_database WHERE datname LIKE '{app_env.dbname}_%'")
        == "0"
    )
    report = artifacts(state)["database-corruption-report"]
    assert "workloads back at their previous scale: backend=3" in report


def test_restore_failure_after_scale_down_restores_the_scale(app_env: AppEnv) -> None:
    backup_id = app_env.backup()
    for art in Path(app_env.tmp, "backups", backup_id).glob("*.zst"):
        art.unlink()  # local copy gone ...
    s3 = boto3.client("s3")
    key = f"database-backups/{backup_id}/database.pgdump.zst"
    s3.put_object(Bucket=app_env.extra["bucket"], Key=key, Body=b"not a backup")  # ... S3 bad
    _corrupt(app_env)
    state = database_corruption(
        config=str(app_env.config),
        confirm=True,
        backup={"strategy": "backup_id", "backup_id": backup_id},
        return_state=True,
    )
    assert state.is_failed()
    assert "no intact copy" in state.message
    assert app_env.replicas() == 3
    assert _scale_writes(app_env) == [0, 3]
    report = artifacts(state)["database-corruption-report"]
    assert "FAILED: no intact copy" in report
    assert "workloads back at their previous scale: backend=3" in report


def test_keep_down_on_failure_leaves_workloads_at_zero(app_env: AppEnv) -> None:
    backup_id = app_env.backup()
    for art in (app_env.tmp / "backups" / backup_id).glob("*.zst"):
        art.write_bytes(b"damaged")  # the restore fails after the scale-down
    s3 = boto3.client("s3")
    bucket = app_env.extra["bucket"]
    for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        if o["Key"].endswith(".zst"):
            s3.put_object(Bucket=bucket, Key=o["Key"], Body=b"damaged")
    state = database_corruption(
        config=str(app_env.config), confirm=True, keep_down_on_failure=True, return_state=True
    )
    assert state.is_failed()
    assert app_env.replicas() == 0
    report = artifacts(state)["database-corruption-report"]
    assert "workloads left at 0 (keep_down_on_failure); previous scale: backend=3" in report


def test_application_never_healthy_fails_with_the_report_saying_so(app_env: AppEnv) -> None:
    app_env.backup()
    app_env.write_config(
        health='[[health]]\nurl = "http://127.0.0.1:9/health"\ntimeout_s = 0.5\n',
        top=f'environment = "test-{app_env.dbname}"\nhealth_deadline_s = 2\n',
    )
    state = database_corruption(config=str(app_env.config), confirm=True, return_state=True)
    assert state.is_failed()
    assert "did not become healthy within 2s" in state.message
    report = artifacts(state)["database-corruption-report"]
    assert "| Health check | ❌ failed |" in report
    assert "| RTO (start → healthy) | 60 min | - | not reached |" in report


def test_dry_run_changes_nothing(app_env: AppEnv) -> None:
    backup_id = app_env.backup()
    _corrupt(app_env)
    state = database_corruption(config=str(app_env.config), dry_run=True, return_state=True)
    assert state.is_completed()
    assert _scale_writes(app_env) == []
    assert app_env.sql("SELECT count(*) FROM trades") == "0"
    plan = artifacts(state)["database-corruption-plan"]
    assert "dry run (nothing changed)" in plan
    assert backup_id in plan
    assert "stop: backend (now 3)" in plan


def test_data_loss_restores_the_newest_backup_before_the_deletion(app_env: AppEnv) -> None:
    first = app_env.backup()
    app_env.sql(
        "INSERT INTO users SELECT g, 'late' || g || '@example.com', '2026-03-01' "
        "FROM generate_series(1000, 1009) g"
    )
    between = datetime.now(UTC)
    second = app_env.backup()
    app_env.sql("DELETE FROM trades WHERE id > 10")  # the accident
    state = data_loss(
        deleted_at=between,
        config=str(app_env.config),
        confirm=True,
        checks=[
            {
                "name": "trades before the deletion",
                "min": 1000,
                "sql": "SELECT count(*) FROM trades",
            }
        ],
        return_state=True,
    )
    assert state.is_completed(), state.message
    report = artifacts(state)["data-loss-report"]
    assert first in report
    assert second not in report  # taken after the deletion time
    assert app_env.sql("SELECT count(*) FROM users") == "50"
    assert "| trades before the deletion | >= 1000 | 1000 | ✅ |" in report


def test_security_breach_rotates_secrets_and_never_shows_them(app_env: AppEnv) -> None:
    role = f"{app_env.dbname}_app"
    app_env.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'compromised'")
    app_env.write_config(
        secrets=(
            '[secrets]\nkubernetes_secret = "app-secrets"\n'
            'rotate_keys = ["JWT_SECRET", "API_KEY", "ENCRYPTION_KEY"]\n'
            f'database_role = "{role}"\n'
        )
    )
    app_env.backup()
    before = app_env.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
    breach = datetime.now(UTC) + timedelta(seconds=1)
    state = security_breach(
        breach_at=breach, config=str(app_env.config), confirm=True, return_state=True
    )
    assert state.is_completed(), state.message
    values = app_env.k8s.state.secret_values("app-secrets")
    assert set(values) == {"JWT_SECRET", "API_KEY", "ENCRYPTION_KEY", "DATABASE_PASSWORD"}
    assert app_env.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'") != before
    restarts = [
        r
        for r in app_env.k8s.state.requests
        if r.method == "PATCH" and r.path.endswith("/deployments/backend")
    ]
    assert restarts  # the rolling restart
    everything = logs(state) + repr(artifacts(state)) + repr(app_env.webhook.messages)
    for secret in values.values():
        assert secret not in everything
    # nor in anything the run wrote: backups, history, audit trail, locally and in S3
    s3 = boto3.client("s3")
    bucket = app_env.extra["bucket"]
    written = b"".join(p.read_bytes() for p in app_env.tmp.rglob("*") if p.is_file())
    written += b"".join(
        s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    )
    for secret in values.values():
        assert secret.encode() not in written
    assert "rotate-secret" in [r.action for r in _audit(app_env) if r.ok]
    subjects = app_env.webhook.subjects()
    assert any("services restored" in s for s in subjects)
    report = artifacts(state)["security-breach-report"]
    assert "new values for JWT_SECRET, API_KEY, ENCRYPTION_KEY, DATABASE_PASSWORD" in report


def test_infrastructure_loss_rebuilds_from_s3_on_a_new_cluster(
    app_env: AppEnv, tmp_path: Path
) -> None:
    backup_id = app_env.backup()
    for path in sorted(Path(tmp_path, "backups").rglob("*"), reverse=True):  # local disk lost
        path.rmdir() if path.is_dir() else path.unlink()
    manifests = tmp_path / "k8s"
    manifests.mkdir()
    (manifests / "app.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: backend-config\n"
        "data:\n  LOG_LEVEL: info\n"
    )
    r53 = boto3.client("route53")
    zone = r53.create_hosted_zone(Name="cryptoorchestrator.com", CallerReference=backup_id)[
        "HostedZone"
    ]["Id"].split("/")[-1]
    with PgCluster() as new_cluster:
        new_url = new_cluster.url_for("cryptoorchestrator")
        app_env.write_config(
            database=f'[[databases]]\nname = "main"\nurl = "{new_url}"\n',
            platform=(
                f'[platform]\nkind = "kubernetes"\nnamespace = "{app_env.k8s.namespace}"\n'
                f'kubeconfig = "{app_env.k8s.kubeconfig}"\nmanifests_dir = "k8s"\n'
                'ready_timeout_s = 20\n[[platform.workloads]]\nname = "backend"\n'
                'kind = "Deployment"\nreplicas = 2\n'
            ),
            dns=(
                f'[dns]\nzone_id = "{zone}"\nrecords = [{{ name = "api.cryptoorchestrator.com"'
                ', value = "lb-new.example.com" }]\n'
            ),
        )
        state = infrastructure_loss(
            config=str(app_env.config),
            confirm=True,
            backup={"strategy": "backup_id", "backup_id": backup_id},
            return_state=True,
        )
        assert state.is_completed(), state.message
        with psycopg.connect(new_cluster.url_for("cryptoorchestrator")) as conn:
            assert conn.execute("SELECT count(*) FROM trades").fetchone() == (1000,)
        report = artifacts(state)["infrastructure-loss-report"]
        assert f"s3://{app_env.extra['bucket']}/database-backups" in report
        assert "ConfigMap/backend-config" in report
        assert "api.cryptoorchestrator.com CNAME lb-new.example.com: INSYNC" in report
        assert "| terraform apply | ⚪ not configured |" in report
        assert app_env.replicas() == 2


def test_approval_timeout_restores_the_scale(app_env: AppEnv) -> None:
    app_env.backup()
    state = database_corruption(config=str(app_env.config), approval_timeout_s=2, return_state=True)
    # Prefect itself fails a run whose pause timed out; what matters is what was left behind
    assert not state.is_completed()
    assert _scale_writes(app_env) == [0, 3]
    report = artifacts(state)["database-corruption-report"]
    assert "stopped: no approval within 2s: nothing was restored" in report
    assert "workloads back at their previous scale: backend=3" in report


def test_one_recovery_per_environment_at_a_time(app_env: AppEnv) -> None:
    from prefect import get_client
    from prefect.concurrency.sync import concurrency

    name = f"dr-recovery-test-{app_env.dbname}"
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    with concurrency(name, occupy=1, strict=True):  # another recovery holds the environment
        state = database_corruption(config=str(app_env.config), confirm=True, return_state=True)
    assert state.is_failed()
    assert f"another recovery of environment 'test-{app_env.dbname}' is running" in str(
        state.result(raise_on_failure=False)
    )
    assert _scale_writes(app_env) == []  # nothing was touched


def test_notifications_through_a_prefect_block(app_env: AppEnv) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    CustomWebhookNotificationBlock(
        name="dr-oncall",
        url=app_env.webhook.url,
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
    ).save("dr-oncall", overwrite=True)
    app_env.write_config(
        notifications='[[notifications]]\naudience = "on-call"\n'
        'block = "custom-webhook/dr-oncall"\n'
    )
    state = database_corruption(
        config=str(app_env.config), dry_run=False, confirm=True, return_state=True
    )  # no backup: fails, and says so
    assert state.is_failed()
    subjects = app_env.webhook.subjects()
    assert subjects[0].endswith("database-corruption started")
    assert "database-corruption: FAILED: no good backup" in subjects[-1]


@pytest.mark.parametrize(
    "scenario", ["database-corruption", "data-loss", "security-breach", "infrastructure-loss"]
)
def test_every_scenario_runs_on_the_local_platform(app_env: AppEnv, scenario: str) -> None:
    """No Kubernetes, no AWS: a local process as the application, a local backup dir."""
    local_port = free_port()
    app_env.write_config(
        storage='[storage]\nbackup_dir = "backups"\n',
        platform=(
            '[platform]\nkind = "local"\nstate_dir = "state"\nready_timeout_s = 20\n'
            '[[platform.workloads]]\nname = "backend"\nkind = "process"\n'
            f'command = ["{sys.executable}", "-m", "tasks.core.demoapp", '
            f'"--port", "{local_port}"]\n'
            f'env = {{ DATABASE_URL = "{app_env.url}" }}\n'
            f'health_url = "http://127.0.0.1:{local_port}/health"\n'
        ),
        health=f'[[health]]\nurl = "http://127.0.0.1:{local_port}/health"\n',
        secrets='[secrets]\nkubernetes_secret = "app-secrets"\nrotate_keys = ["JWT_SECRET"]\n',
        notifications="",
    )

    platform = build_platform(load_config(app_env.config))
    platform.scale_up(ScaleState({"backend": 1}))
    try:
        platform.wait_ready({"backend": 1}, 20)
        app_env.backup()
        later = datetime.now(UTC) + timedelta(seconds=1)
        _corrupt(app_env)
        flows = {
            "database-corruption": lambda: database_corruption(
                config=str(app_env.config), confirm=True, return_state=True
            ),
            "data-loss": lambda: data_loss(
                deleted_at=later, config=str(app_env.config), confirm=True, return_state=True
            ),
            "security-breach": lambda: security_breach(
                breach_at=later, config=str(app_env.config), confirm=True, return_state=True
            ),
            "infrastructure-loss": lambda: infrastructure_loss(
                config=str(app_env.config), confirm=True, return_state=True
            ),
        }
        state = flows[scenario]()
        assert state.is_completed(), state.message
        assert app_env.sql("SELECT count(*) FROM trades") == "1000"
        assert platform.replicas(["backend"]) == {"backend": 1}
        report = artifacts(state)[f"{scenario}-report"]
        if scenario == "infrastructure-loss":
            assert "| Apply manifests | ⚪ not configured |" in report
            assert "| Update DNS | ⚪ not configured |" in report
    finally:
        platform.scale_down(["backend"])


def test_times_in_the_future_are_refused_before_anything_changes(app_env: AppEnv) -> None:
    app_env.backup()
    state = data_loss(
        deleted_at=datetime.now(UTC) + timedelta(days=1),
        config=str(app_env.config),
        confirm=True,
        return_state=True,
    )
    assert state.is_failed()
    assert "is in the future" in str(state.result(raise_on_failure=False))
    assert _scale_writes(app_env) == []


def test_a_time_without_zone_is_utc(app_env: AppEnv) -> None:
    app_env.backup()
    naive = datetime.now(UTC).replace(tzinfo=None)
    state = data_loss(deleted_at=naive, config=str(app_env.config), dry_run=True, return_state=True)
    assert state.is_completed(), state.message
