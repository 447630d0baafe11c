"""The application as local processes: the embedded default platform.

Each workload is one process started from a command (``LocalWorkload``); it has 1 replica while
that process runs and 0 otherwise. Asking for more than 1 replica starts one process (and
``wait_ready`` waits for that one). Processes are started in their own session so that they
outlive the ``dr`` command that started them; what runs is recorded in the state directory,
so that a later ``dr`` (another ``LocalPlatform`` on the same directory) stops what an
earlier one started. A record holds the pid and the process's start time: a pid reused by
another program has another start time and is never signalled.

State directory (0700)::

    <name>.json          pid, start time and command of the running process
    <name>.down          written by scale_down before it stops the process, removed by
                         scale_up: a retried or repeated scale_down still returns 1
    <name>.log           the process's stdout and stderr, appended
    secrets/<name>.env   one file per secret (0600): KEY="value" lines, values JSON-quoted

Every process gets every secret as environment variables (over the workload's own ``env``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tasks.core.errors import ConfigError, PermanentError, TransientError
from tasks.core.platform import ScaleState, poll_until_ready, scale_all

__all__ = ["LocalPlatform", "LocalWorkload"]

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")  # file-name safe: no "/", no leading "."
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")  # what Kubernetes accepts as a Secret key
_PROC = Path("/proc")
_KILL_WAIT_S = 5.0  # after SIGKILL, the kernel only has to reap the process
# processes this Python process started: polled so that they do not linger as zombies
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap() -> None:
    """Collect every child of ours that has exited, also those another process stopped (a
    long-lived process such as a worker would otherwise keep them as zombies)."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


@dataclass(frozen=True)
class LocalWorkload:
    """One workload run as a local process."""

    name: str
    command: list[str]
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None  # ready = running and GET returns 2xx; None: running is ready


@dataclass(frozen=True)
class _Record:
    pid: int
    start: str | None  # the process's start time as the system reports it


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque token; None if no such process runs (a
    zombie has stopped running). Reads /proc where there is one, asks ``ps`` elsewhere."""
    if _PROC.is_dir():
        try:
            stat = (_PROC / str(pid) / "stat").read_text()
        except OSError:
            return None
        state, *rest = stat[stat.rindex(")") + 2 :].split()  # the name in (...) may hold spaces
        return None if state in ("Z", "X") else rest[18]  # field 22: start time in clock ticks
    out = subprocess.run(
        ["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout.strip()
    return None if not out or out.startswith("Z") else out.split(None, 1)[1]


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner can read (0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_name(what: str, name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"{what} name {name!r} must be letters, digits, '.', '_' or '-'")


class LocalPlatform:
    """Workloads run as local processes (see the module docstring)."""

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        workloads: Iterable[LocalWorkload],
        *,
        stop_timeout_s: float = 10.0,
        poll_interval_s: float = 0.5,
        health_timeout_s: float = 2.0,
    ) -> None:
        self._workloads: dict[str, LocalWorkload] = {}
        for w in workloads:
            _check_name("workload", w.name)
            if w.name in self._workloads:
                raise ConfigError(f"workload {w.name!r} is configured twice")
            if not w.command:
                raise ConfigError(f"workload {w.name!r} has no command")
            self._workloads[w.name] = w
        self.state_dir = state_dir
        self.stop_timeout_s = stop_timeout_s
        self.poll_interval_s = poll_interval_s
        self.health_timeout_s = health_timeout_s
        self._secrets_dir = state_dir / "secrets"
        self._secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        state_dir.chmod(0o700)

    # -- processes ------------------------------------------------------------------------

    def _workload(self, name: str) -> LocalWorkload:
        try:
            return self._workloads[name]
        except KeyError:
            known = ", ".join(sorted(self._workloads)) or "none"
            raise ConfigError(f"unknown workload {name!r} (configured: {known})") from None

    def _check(self, names: Iterable[str]) -> None:
        """Every name is configured: checked before anything is changed."""
        for name in names:
            self._workload(name)

    def _record_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        """Where the output of workload ``name`` goes."""
        return self.state_dir / f"{name}.log"

    def _running(self, name: str) -> int | None:
        """The pid of the workload's process if the recorded process still runs."""
        try:
            raw = json.loads(self._record_path(name).read_text(encoding="utf-8"))
            record = _Record(int(raw["pid"]), raw["start"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PermanentError(
                f"unreadable process record {self._record_path(name)}: {type(exc).__name__}"
            ) from exc
        _reap()
        start = _start_time(record.pid)
        return record.pid if start is not None and start == record.start else None

    def _start(self, w: LocalWorkload) -> None:
        env = {**os.environ, **w.env, **self._secret_env()}
        log = self.log_path(w.name).open("ab")
        try:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"--- {stamp} dr starts: {shlex.join(w.command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                w.command,
                cwd=w.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, and it outlives dr
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot start workload {w.name!r}: {exc.strerror}: {exc.filename or w.command[0]}"
            ) from exc
        finally:
            log.close()
        _CHILDREN[proc.pid] = proc
        record = {"pid": proc.pid, "start": _start_time(proc.pid), "command": w.command}
        _write_private(self._record_path(w.name), json.dumps(record) + "\n")

    def _signal(self, name: str, pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)  # the whole process group: a shell's children stop too
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise PermanentError(
                f"not allowed to stop workload {name!r} (pid {pid}): it runs as another user"
            ) from exc

    def _stopped(self, name: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._running(name) is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _stop(self, name: str) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``; then forget the process."""
        pid = self._running(name)
        if pid is not None:
            self._signal(name, pid, signal.SIGTERM)
            if not self._stopped(name, self.stop_timeout_s):
                self._signal(name, pid, signal.SIGKILL)
                if not self._stopped(name, _KILL_WAIT_S):
                    raise PermanentError(f"workload {name!r} (pid {pid}) survived SIGKILL")
            child = _CHILDREN.pop(pid, None)
            if child is not None:
                child.wait()  # it has exited: collect its status so that no zombie remains
        self._record_path(name).unlink(missing_ok=True)

    def _scaled_down(self, name: str) -> Path:
        return self.state_dir / f"{name}.down"

    def _set_replicas(self, name: str, replicas: int) -> None:
        if replicas == 0:
            self._stop(name)
        elif self._running(name) is None:
            self._start(self._workload(name))
        self._scaled_down(name).unlink(missing_ok=True)  # restored: nothing left to remember

    def _observe(self, name: str, target: int) -> int:
        """1 while the process runs, and for a non-zero target also answers its health URL."""
        if self._running(name) is None:
            return 0
        if target == 0:
            return 1
        return int(self._healthy(self._workload(name)))

    def _healthy(self, w: LocalWorkload) -> bool:
        if w.health_url is None:
            return True
        try:
            response = httpx.get(
                w.health_url,
                timeout=httpx.Timeout(self.health_timeout_s),
                trust_env=False,  # a local URL: never through a proxy from the environment
            )
        except httpx.HTTPError:
            return False
        return response.is_success

    # -- the protocol ---------------------------------------------------------------------

    def replicas(self, workloads: Sequence[str]) -> dict[str, int]:
        self._check(workloads)
        return {name: int(self._running(name) is not None) for name in workloads}

    def scale_down(self, workloads: Sequence[str]) -> ScaleState:
        self._check(workloads)
        before = {
            name: int(self._running(name) is not None or self._scaled_down(name).exists())
            for name in workloads
        }

        def to_zero(name: str, _: int) -> None:
            if before[name]:
                _write_private(self._scaled_down(name), f"{before[name]}\n")
            self._stop(name)

        scale_all(dict.fromkeys(before, 0), to_zero, undo=before)
        return ScaleState(before)

    def scale_up(self, state: ScaleState) -> None:
        self._check(state.replicas)
        scale_all(state.replicas, self._set_replicas)

    def wait_ready(self, workloads: Mapping[str, int], timeout_s: float) -> dict[str, int]:
        self._check(workloads)
        targets = {name: min(n, 1) for name, n in workloads.items()}  # one process at most
        try:
            return poll_until_ready(targets, self._observe, timeout_s, self.poll_interval_s)
        except TransientError as exc:
            raise TransientError(f"{exc} (process output: {self.state_dir}/<name>.log)") from exc

    def rollout_restart(self, workloads: Sequence[str]) -> None:
        self._check(workloads)
        for name in workloads:
            if self._running(name) is not None:
                self._stop(name)
                self._start(self._workload(name))

    # -- secrets --------------------------------------------------------------------------

    def _secret_path(self, name: str) -> Path:
        _check_name("secret", name)
        return self._secrets_dir / f"{name}.env"

    @staticmethod
    def _parse_secret(path: Path) -> dict[str, str]:
        values: dict[str, str] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            key, sep, quoted = line.partition("=")
            try:
                value = json.loads(quoted) if sep else None
            except ValueError:
                value = None
            if not isinstance(value, str):
                # the line number only: the line holds a secret
                raise PermanentError(f'{path}: line {number} is not KEY="value"')
            values[key] = value
        return values

    def read_secret(self, name: str) -> dict[str, str]:
        path = self._secret_path(name)
        try:
            return self._parse_secret(path)
        except FileNotFoundError:
            raise ConfigError(f"secret {name!r} does not exist (no {path})") from None

    def write_secret(self, name: str, values: Mapping[str, str]) -> None:
        path = self._secret_path(name)
        for key, value in values.items():
            if not _SECRET_KEY.match(key):
                raise ConfigError(f"secret {name!r}: key {key!r} must be letters, digits, . _ -")
            if "\0" in value:
                raise ConfigError(f"secret {name!r}: the value of {key!r} contains a NUL byte")
        merged = self._parse_secret(path) if path.exists() else {}
        merged.update(values)
        # JSON-quoted values: newlines and quotes survive the round trip
        _write_private(path, "".join(f"{k}={json.dumps(v)}\n" for k, v in merged.items()))

    def _secret_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for path in sorted(self._secrets_dir.glob("*.env")):
            env.update(self._parse_secret(path))
        return env

    def apply_manifests(self, directory: Path) -> list[str]:
        raise ConfigError("the local platform has no manifests to apply")
