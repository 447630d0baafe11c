"""LocalPlatform with a real local HTTP app as the workload."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tasks.core.errors import ConfigError, TransientError
from tasks.core.pgcluster import free_port
from tasks.core.platform import ScaleState
from tasks.core.platform import local as local_mod
from tasks.core.platform.local import LocalPlatform, LocalWorkload

APP = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            code, body = 200, b"ok"
        elif self.path.startswith("/env/"):
            code, body = 200, json.dumps(os.environ.get(self.path[5:])).encode()
        else:
            code, body = 503, b"not ready"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("listening", flush=True)
HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _app(tmp_path: Path, name: str = "app", health: str = "/health") -> LocalWorkload:
    script = tmp_path / "app.py"
    script.write_text(APP)
    port = free_port()
    return LocalWorkload(
        name=name,
        command=[sys.executable, str(script), str(port)],
        cwd=tmp_path,
        env={"APP_MODE": "test"},
        health_url=f"http://127.0.0.1:{port}{health}",
    )


@pytest.fixture
def app(tmp_path: Path) -> LocalWorkload:
    return _app(tmp_path)


def _platform(state_dir: Path, *workloads: LocalWorkload, **kwargs: float) -> LocalPlatform:
    kwargs = {"poll_interval_s": 0.05, "stop_timeout_s": 5.0, **kwargs}
    return LocalPlatform(state_dir, list(workloads), **kwargs)


@pytest.fixture
def platform(tmp_path: Path, app: LocalWorkload) -> Iterator[LocalPlatform]:
    p = _platform(tmp_path / "state", app)
    yield p
    p.scale_down([app.name])  # never leave a process behind


def _get(w: LocalWorkload, path: str) -> httpx.Response:
    assert w.health_url is not None
    return httpx.get(w.health_url.replace("/health", path), timeout=5, trust_env=False)


def _pid(platform: LocalPlatform, name: str = "app") -> int:
    record = json.loads((platform.state_dir / f"{name}.json").read_text())
    return int(record["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_scale_up_starts_the_app_and_wait_ready_uses_its_health_url(
    platform: LocalPlatform, app: LocalWorkload
) -> None:
    assert platform.replicas(["app"]) == {"app": 0}
    platform.scale_up(ScaleState({"app": 1}))

    assert platform.wait_ready({"app": 1}, timeout_s=20) == {"app": 1}
    assert _get(app, "/health").status_code == 200  # ready means it answers
    assert platform.replicas(["app"]) == {"app": 1}
    assert "listening" in platform.log_path("app").read_text()


def test_scale_down_stops_the_app_and_returns_what_ran(
    platform: LocalPlatform, app: LocalWorkload
) -> None:
    platform.scale_up(ScaleState({"app": 1}))
    platform.wait_ready({"app": 1}, timeout_s=20)
    pid = _pid(platform)

    assert platform.scale_down(["app"]) == ScaleState({"app": 1})
    assert platform.replicas(["app"]) == {"app": 0}
    assert platform.wait_ready({"app": 0}, timeout_s=0) == {"app": 0}
    assert not _alive(pid)
    with pytest.raises(httpx.ConnectError):
        _get(app, "/health")


def test_a_repeated_scale_down_still_returns_what_ran_before_the_first(
    platform: LocalPlatform,
) -> None:
    platform.scale_up(ScaleState({"app": 1}))
    platform.scale_down(["app"])
    # a retry, or the next run after a crash: the app is already stopped
    assert platform.scale_down(["app"]) == ScaleState({"app": 1})

    platform.scale_up(ScaleState({"app": 1}))
    assert platform.replicas(["app"]) == {"app": 1}
    platform.scale_up(ScaleState({"app": 0}))  # restored to exactly 0: nothing to remember
    assert platform.scale_down(["app"]) == ScaleState({"app": 0})


def test_another_platform_on_the_same_state_dir_sees_and_stops_the_app(
    platform: LocalPlatform, app: LocalWorkload
) -> None:
    platform.scale_up(ScaleState({"app": 1}))
    later = _platform(platform.state_dir, app)  # e.g. the next `dr` command

    assert later.replicas(["app"]) == {"app": 1}
    assert later.scale_down(["app"]) == ScaleState({"app": 1})
    assert platform.replicas(["app"]) == {"app": 0}


def test_an_app_that_never_gets_healthy_times_out_naming_it(tmp_path: Path) -> None:
    sick = _app(tmp_path, "sick", health="/not-ready")  # answers 503
    p = _platform(tmp_path / "state", sick)
    p.scale_up(ScaleState({"sick": 1}))
    try:
        with pytest.raises(TransientError, match=r"sick 0/1 ready") as caught:
            p.wait_ready({"sick": 1}, timeout_s=0.5)
        assert str(p.state_dir) in str(caught.value)  # where its output is
        assert p.replicas(["sick"]) == {"sick": 1}  # it runs, it just is not ready
    finally:
        p.scale_down(["sick"])


def test_secrets_are_private_files_that_reach_the_process_environment(
    platform: LocalPlatform, app: LocalWorkload
) -> None:
    platform.write_secret("db", {"DB_PASSWORD": "first"})
    platform.write_secret("db", {"DB_PASSWORD": 's3cr3t"value\nline 2', "DB_USER": "app"})
    assert platform.read_secret("db") == {"DB_PASSWORD": 's3cr3t"value\nline 2', "DB_USER": "app"}

    platform.scale_up(ScaleState({"app": 1}))
    platform.wait_ready({"app": 1}, timeout_s=20)
    assert _get(app, "/env/DB_PASSWORD").json() == 's3cr3t"value\nline 2'
    assert _get(app, "/env/APP_MODE").json() == "test"

    state = platform.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "secrets" / "db.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "app.json").stat().st_mode) == 0o600
    for path in (state / "app.json", state / "app.log"):
        assert "s3cr3t" not in path.read_text()


def test_rollout_restart_replaces_the_process_with_one_that_has_the_new_secret(
    platform: LocalPlatform, app: LocalWorkload
) -> None:
    platform.write_secret("db", {"DB_PASSWORD": "old"})
    platform.scale_up(ScaleState({"app": 1}))
    platform.wait_ready({"app": 1}, timeout_s=20)
    old_pid = _pid(platform)

    platform.write_secret("db", {"DB_PASSWORD": "new"})
    platform.rollout_restart(["app"])
    platform.wait_ready({"app": 1}, timeout_s=20)

    assert _pid(platform) != old_pid
    assert not _alive(old_pid)
    assert _get(app, "/env/DB_PASSWORD").json() == "new"


def test_a_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    stubborn = LocalWorkload(
        name="stubborn",
        command=[
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ignoring SIGTERM', flush=True)\n"
            "time.sleep(60)\n",
        ],
    )
    p = _platform(tmp_path / "state", stubborn, stop_timeout_s=0.3)
    p.scale_up(ScaleState({"stubborn": 1}))
    deadline = time.monotonic() + 20
    while "ignoring SIGTERM" not in p.log_path("stubborn").read_text():
        assert time.monotonic() < deadline, "the process did not start"
        time.sleep(0.02)
    pid = _pid(p, "stubborn")

    assert p.scale_down(["stubborn"]) == ScaleState({"stubborn": 1})
    assert not _alive(pid)


def test_a_recycled_pid_is_never_signalled(tmp_path: Path, app: LocalWorkload) -> None:
    p = _platform(tmp_path / "state", app)
    # another program now has the recorded pid: same pid, another start time
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            record = {"pid": other.pid, "start": "0", "command": app.command}
            (p.state_dir / "app.json").write_text(json.dumps(record))

            assert p.replicas(["app"]) == {"app": 0}
            assert p.scale_down(["app"]) == ScaleState({"app": 0})
            assert other.poll() is None  # still running
        finally:
            other.kill()


def test_without_proc_the_start_time_comes_from_ps(
    platform: LocalPlatform, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(local_mod, "_PROC", tmp_path / "no-proc")
    platform.scale_up(ScaleState({"app": 1}))
    assert platform.replicas(["app"]) == {"app": 1}
    assert platform.scale_down(["app"]) == ScaleState({"app": 1})


def test_configuration_errors(platform: LocalPlatform, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown workload 'web'"):
        platform.scale_down(["app", "web"])
    with pytest.raises(ConfigError, match="no manifests"):
        platform.apply_manifests(tmp_path)
    with pytest.raises(ConfigError, match="'db' does not exist"):
        platform.read_secret("db")
    with pytest.raises(ConfigError, match="secret name"):
        platform.write_secret("../escape", {"K": "v"})
    with pytest.raises(ConfigError, match="key 'BAD KEY'") as caught:
        platform.write_secret("db", {"BAD KEY": "the-value"})
    assert "the-value" not in str(caught.value)

    missing = LocalWorkload(name="missing", command=[str(tmp_path / "no-such-program")])
    p = _platform(tmp_path / "other-state", missing)
    with pytest.raises(ConfigError, match="cannot start workload 'missing'"):
        p.scale_up(ScaleState({"missing": 1}))
