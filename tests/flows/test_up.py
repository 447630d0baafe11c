"""dr up: one command brings up server, deployments, limits and worker; Ctrl-C stops them and
the schedules stay active (the serve/pause_on_shutdown trap does not apply)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.core.pgcluster import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
DR = str(Path(sys.executable).with_name("dr"))
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _deployments(base: str) -> dict[str, dict]:
    resp = httpx.post(f"{base}/api/deployments/filter", json={}, timeout=10)
    resp.raise_for_status()
    return {d["name"]: d for d in resp.json()}


def _wait_health(base: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc is None or proc.poll() is None, "the process exited"
        time.sleep(0.5)
    pytest.fail("no healthy server")


def test_dr_up_runs_everything_and_ctrl_c_keeps_schedules(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.Popen(
        [DR, "up", "--port", str(port), "--state-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        assert f"UI: {base}\n" in lines, "".join(lines)
        deployments = _deployments(base)
        assert {"database-corruption", "nightly-backup", "restore-test", "dr-drill"} <= set(
            deployments
        )
        deadline = time.monotonic() + 60
        while not httpx.post(
            f"{base}/api/work_pools/dr-process/workers/filter", json={}, timeout=10
        ).json():
            assert time.monotonic() < deadline, "no worker ever polled the pool"
            time.sleep(1)
        limits = httpx.post(f"{base}/api/v2/concurrency_limits/filter", json={}, timeout=10).json()
        assert "dr-recovery-local" in [lim["name"] for lim in limits]
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped the server" in rest
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/api/health", timeout=2)

    # start the same server again: the schedules were not paused by stopping
    server_env = {
        **env,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_health(base)
        nightly = _deployments(base)["nightly-backup"]
        assert nightly["paused"] is False
        assert [s["active"] for s in nightly["schedules"]] == [True]
    finally:
        server.terminate()
        server.wait(timeout=30)
