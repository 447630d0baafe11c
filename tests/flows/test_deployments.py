"""prefect.yaml: every deployment imports to its flow and registers with a Prefect server, so
on-call finds each scenario in the UI with its parameter form."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect import get_client
from prefect.settings import PREFECT_API_URL

REPO = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
SCENARIOS = {"database-corruption", "infrastructure-loss", "data-loss", "security-breach"}


def test_every_entrypoint_is_the_flow_of_the_same_name() -> None:
    names = set()
    for dep in SPEC["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert flow.name == dep["name"]
        assert dep["work_pool"]["name"] == "dr-process"
        names.add(dep["name"])
    assert names >= SCENARIOS


@pytest.mark.slow
def test_prefect_deploy_registers_every_scenario_with_its_form(prefect_api: None) -> None:
    api = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": api}
    prefect = str(Path(sys.executable).with_name("prefect"))
    subprocess.run(
        [prefect, "work-pool", "create", "dr-process", "--type", "process", "--overwrite"],
        env=env,
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with get_client(sync_client=True) as client:
        for name in SCENARIOS:
            dep = client.read_deployment_by_name(f"{name}/{name}")
            schema = dep.parameter_openapi_schema
            assert {"config", "confirm", "dry_run"} <= set(schema["properties"])
            if name != "infrastructure-loss":
                assert "keep_down_on_failure" in schema["properties"]
        strategy = client.read_deployment_by_name("data-loss/data-loss").parameter_openapi_schema
        assert strategy["required"] == ["deleted_at"]
        assert strategy["definitions"]["BackupStrategy"]["enum"] == [
            "latest",
            "backup_id",
            "before",
        ]
