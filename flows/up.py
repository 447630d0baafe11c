"""``dr up``: everything on one machine, from a checkout: a Prefect server (SQLite in the state
dir), every deployment of prefect.yaml on a process work pool, the concurrency limits, a
worker. Ctrl-C stops what it started; the schedules stay active (a worker, not ``serve``, so
stopping never pauses deployments: notes/prefect.md §9a).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from tasks.core.config import load_config
from tasks.core.errors import CommandFailed, ConfigError

__all__ = ["POOL", "run_up"]

POOL = "dr-process"
REPO = Path(__file__).resolve().parent.parent


def _prefect() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def _restore_sigint() -> None:
    # a worker started from a non-interactive parent ignores SIGINT and so one SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc: subprocess.Popen[bytes], name: str, say: Callable[[str], None]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    say(f"stopped the {name}")


def run_up(
    state_dir: Path,
    port: int,
    config: Path | None,
    say: Callable[[str], None],
    *,
    until: Callable[[], bool] | None = None,
) -> None:
    """Start server, deployments, limits and worker; block until Ctrl-C (or ``until()``)."""
    if not (REPO / "prefect.yaml").exists():
        raise ConfigError(f"prefect.yaml not found in {REPO}: run dr up from a checkout")
    cfg = load_config(config)
    state_dir = state_dir.resolve()
    (state_dir / "prefect").mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(state_dir / "prefect"),
        "PREFECT_API_URL": f"{base}/api",
        "PREFECT_UI_API_URL": f"{base}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if config is not None:
        env["DR_CONFIG"] = str(config.resolve())
    logs: list[IO[bytes]] = []
    procs: list[tuple[subprocess.Popen[bytes], str]] = []

    def start(args: list[str], name: str, **kw: object) -> subprocess.Popen[bytes]:
        log = open(state_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in finally
        logs.append(log)
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
        procs.append((proc, name))
        return proc

    def run(args: list[str], what: str) -> None:
        done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CommandFailed(f"{what} failed: {tail[0]}")

    try:
        server = start(
            [_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port)], "server"
        )
        say(f"starting the Prefect server on {base} (log: {state_dir / 'server.log'})")
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise CommandFailed(f"the Prefect server exited: see {state_dir / 'server.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise CommandFailed("the Prefect server did not answer within 120 s")
            time.sleep(0.5)
        run(
            [_prefect(), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
            "creating the work pool",
        )
        run([_prefect(), "--no-prompt", "deploy", "--all"], "registering the deployments")
        limit = f"dr-recovery-{cfg.environment}"
        if not _limit_exists(base, limit):  # one recovery per environment at a time
            run([_prefect(), "gcl", "create", limit, "--limit", "1"], "creating the limit")
        say(f"deployments registered from {REPO / 'prefect.yaml'}; concurrency limit {limit}")
        start(
            [_prefect(), "worker", "start", "--pool", POOL],
            "worker",
            preexec_fn=_restore_sigint,
            cwd=REPO,
        )
        say(f"worker started on pool {POOL} (log: {state_dir / 'worker.log'})")
        say(f"UI: {base}")
        say("Ctrl-C stops the server and the worker; the schedules stay active")
        while until is None or not until():
            for proc, name in procs:
                if proc.poll() is not None:
                    raise CommandFailed(
                        f"the {name} exited (code {proc.returncode}): see "
                        f"{state_dir / (name + '.log')}"
                    )
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        for proc, name in reversed(procs):
            _stop(proc, name, say)
        for log in logs:
            log.close()


def _limit_exists(base: str, name: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{base}/api/v2/concurrency_limits/{name}", timeout=5).status_code == 200
    return False
