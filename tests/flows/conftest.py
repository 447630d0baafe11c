"""Fixtures for the scenario flows: one Prefect test server for the session, and a complete
application environment built from real parts (PostgreSQL, moto S3/Route53, the Kubernetes API
emulator, the demo app as a real HTTP service, a webhook listener)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="dr-prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.testing.utilities import prefect_test_harness

from tasks.core.backup import backup_database
from tasks.core.config import load_config
from tasks.core.dburl import parse_database_url
from tasks.core.environment import build_catalog
from tasks.core.pgcluster import PgCluster, free_port
from tasks.core.sampledata import create_postgres_app_db
from tests.k8s_emulator import Emulator, application_role, run_emulator


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=90):
        yield


class Webhook:
    """A real HTTP listener standing in for Slack/PagerDuty: records what it was sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.messages.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def subjects(self) -> list[str]:
        return [m["subject"] for m in self.messages]


@dataclass
class AppEnv:
    """Everything a scenario touches, and handles to look at it afterwards."""

    config: Path
    url: str  # the application database (PostgreSQL)
    pg: PgCluster
    dbname: str
    k8s: Emulator
    webhook: Webhook
    health_url: str
    tmp: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def write_config(self, **sections: str) -> Path:
        """(Re)write dr.toml; keyword sections replace the defaults (e.g. health='')."""
        parts = {**_default_sections(self), **sections}
        self.config.write_text("\n".join(v for v in parts.values() if v))
        return self.config

    def backup(self) -> str:
        cfg = load_config(self.config)
        return backup_database(parse_database_url(self.url), build_catalog(cfg)).manifest.backup_id

    def sql(self, query: str) -> str:
        proc = subprocess.run(
            ["psql", "-X", "-Atq", "-v", "ON_ERROR_STOP=1", self.url, "-c", query],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def replicas(self, name: str = "backend") -> int:
        return int(self.k8s.state.workload(name)["spec"]["replicas"])


def _default_sections(env: AppEnv) -> dict[str, str]:
    return {
        "top": f'environment = "test-{env.dbname}"\nhealth_deadline_s = 20\n',
        "storage": f'[storage]\nbackup_dir = "backups"\ns3_bucket = "{env.extra["bucket"]}"\n',
        "database": (
            f'[[databases]]\nname = "main"\nurl = "{env.url}"\n'
            '[[databases.critical_queries]]\nname = "users exist"\n'
            'sql = "SELECT count(*) FROM users"\n'
        ),
        "platform": (
            f'[platform]\nkind = "kubernetes"\nnamespace = "{env.k8s.namespace}"\n'
            f'kubeconfig = "{env.k8s.kubeconfig}"\nready_timeout_s = 20\n'
            '[[platform.workloads]]\nname = "backend"\nkind = "Deployment"\n'
            "replicas = 3\n"
        ),
        "health": f'[[health]]\nurl = "{env.health_url}"\n',
        "notifications": (
            '[[notifications]]\naudience = "on-call"\n'
            'webhook_url_env = "DR_TEST_WEBHOOK"\n'
            '[[notifications]]\naudience = "stakeholders"\n'
            'webhook_url_env = "DR_TEST_WEBHOOK"\n'
        ),
    }


@pytest.fixture
def app_env(
    prefect_api: None,
    pg: PgCluster,
    dbname: str,
    tmp_path: Path,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[AppEnv]:
    url = pg.url_for(dbname)
    create_postgres_app_db(parse_database_url(url).conninfo, users=50)
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "tasks.core.demoapp", "--port", str(port)],
        env={**os.environ, "DATABASE_URL": url},
    )
    health_url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(health_url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    webhook = Webhook()
    monkeypatch.setenv("DR_TEST_WEBHOOK", webhook.url)
    with run_emulator(tmp_path) as k8s:
        k8s.seed_deployment("backend", replicas=3)
        # the flows get exactly the Role deployments/ grants them, as in a real cluster
        k8s.state.enforce_role(application_role())
        env = AppEnv(
            tmp_path / "dr.toml",
            url,
            pg,
            dbname,
            k8s,
            webhook,
            health_url,
            tmp_path,
            {"bucket": bucket},
        )
        env.write_config()
        yield env
    app.terminate()
    app.wait()
    webhook.server.shutdown()
    webhook.server.server_close()


def flow_run_id(state: Any) -> Any:
    return state.state_details.flow_run_id


def artifacts(state: Any) -> dict[str, Any]:
    """key -> data of every artifact the run created (tables decoded); the latest per key."""
    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id(state)]))
        )
    out: dict[str, Any] = {}
    for a in sorted(arts, key=lambda a: a.created):
        data = a.data
        if a.type == "table" and isinstance(data, str):
            data = json.loads(data)
        out[a.key] = data
    return out


def latest_artifact(key: str) -> Any:
    with get_client(sync_client=True) as c:
        [art] = c.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return art.data


def logs(state: Any) -> str:
    with get_client(sync_client=True) as c:
        entries = c.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id(state)]))
        )
    return "\n".join(e.message for e in entries)


def resume_when_paused(run_input: dict[str, Any], timeout_s: float = 60) -> threading.Thread:
    """Resume the next paused flow run from a thread, as on-call would from the UI."""

    def worker() -> None:
        deadline = time.monotonic() + timeout_s
        with get_client(sync_client=True) as c:
            while time.monotonic() < deadline:
                runs = c.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.PAUSED])
                        )
                    )
                )
                if runs:
                    resume_flow_run(runs[0].id, run_input=run_input)
                    return
                time.sleep(0.2)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    return t
