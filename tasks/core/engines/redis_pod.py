"""A Redis that runs in a Kubernetes pod, controlled for a restore through the API only.

The steps of a local server (``redis.RedisServer``), the Kubernetes way:

- ``stop``: ``CONFIG SET save ""`` and ``CONFIG SET appendonly no`` on the running server, so
  that nothing it writes from now on (a save point, the save at shutdown, AOF appends) lands
  over the files put in place; the writers were stopped before, it has nothing left to do.
- ``put_in_place``: ``tar`` into the pod's data directory through exec (what ``kubectl cp``
  does), then ``mv`` the current RDB and AOF aside (kept) and the snapshot into place, owned
  like the data directory (exec runs as the image's user, often root; Redis may run as another).
  The container needs ``sh``, ``tar``, ``stat`` (as ``kubectl cp`` needs ``tar``).
- ``start_without_aof``: ``--appendonly no`` is appended to the container's ``args`` (the args
  before are the recorded inverse); the pod is replaced and the new server loads the RDB.
  The new server is told from the old one by its ``run_id``.
- ``enable_aof``: ``CONFIG SET appendonly yes``, wait for the rewrite, then the args go back to
  what they were: the pod is replaced once more and loads the AOF that now holds the data.

Every API call goes through ``platform.kubernetes.k8s_errors``.
"""

from __future__ import annotations

import posixpath
import shlex
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes.stream import stream

from tasks.core.engines.redis import (
    Placement,
    RedisServer,
    RedisURL,
    ServerFacts,
    read_facts,
    read_placement,
    redis_errors,
)
from tasks.core.errors import CommandFailed, ConfigError, PermanentError, TransientError
from tasks.core.platform.kubernetes import WorkloadKind, k8s_errors

__all__ = ["RedisPod"]

_CHUNK = 1 << 20
_LOADING_ARGS = ["--appendonly", "no"]


class RedisPod:
    """The Redis of ``workload`` (a StatefulSet or Deployment, one replica) in ``namespace``."""

    def __init__(
        self,
        url: RedisURL,
        api_client: ApiClient,
        namespace: str,
        workload: str,
        kind: WorkloadKind = "StatefulSet",
        container: str | None = None,
        timeout_s: float = 300,
    ) -> None:
        self.url, self.namespace, self.workload, self.kind = url, namespace, workload, kind
        self.container, self.timeout_s = container, timeout_s
        self._client = api_client
        self._apps, self._core = AppsV1Api(api_client), CoreV1Api(api_client)
        self._args_before: list[str] | None = None

    # ---- the workload and its pod -------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        read = (
            self._apps.read_namespaced_stateful_set
            if self.kind == "StatefulSet"
            else self._apps.read_namespaced_deployment
        )
        with k8s_errors(f"read {self.kind} {self.namespace}/{self.workload}"):
            obj = read(self.workload, self.namespace)
        body: dict[str, Any] = self._client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return body

    def _containers(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        containers: list[dict[str, Any]] = self._read()["spec"]["template"]["spec"]["containers"]
        for c in containers:
            if self.container in (None, c["name"]):
                return containers, c
        raise ConfigError(f"{self.kind} {self.workload} has no container {self.container!r}")

    def _set_args(self, args: list[str]) -> None:
        containers, target = self._containers()
        target["args"] = args
        patch = (
            self._apps.patch_namespaced_stateful_set
            if self.kind == "StatefulSet"
            else self._apps.patch_namespaced_deployment
        )
        with k8s_errors(f"set the arguments of {self.kind} {self.namespace}/{self.workload}"):
            patch(
                self.workload,
                self.namespace,
                {"spec": {"template": {"spec": {"containers": containers}}}},
            )

    def _pod(self) -> str:
        selector = self._read()["spec"]["selector"].get("matchLabels", {})
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        with k8s_errors(f"list the pods of {self.namespace}/{self.workload}"):
            pods = self._core.list_namespaced_pod(self.namespace, label_selector=labels).items
        names = sorted(
            str(p.metadata.name)
            for p in pods
            if p.metadata is not None and p.metadata.deletion_timestamp is None
        )
        if not names:
            raise TransientError(f"{self.kind} {self.namespace}/{self.workload} has no pod")
        return names[0]

    def _exec(self, command: list[str], stdin: Iterable[bytes] | None = None) -> str:
        """Run ``command`` in the pod's container; its stdout. CommandFailed on a non-zero exit."""
        pod = self._pod()
        extra = {"container": self.container} if self.container else {}
        what = f"exec {shlex.join(command[:3])} in pod {self.namespace}/{pod}"
        with k8s_errors(what):
            ws = stream(
                self._core.connect_get_namespaced_pod_exec,
                pod,
                self.namespace,
                command=command,
                stdin=stdin is not None,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
                **extra,
            )
        out, err = [], []
        try:
            for chunk in stdin or ():
                ws.write_stdin(chunk)
            deadline = time.monotonic() + self.timeout_s
            while ws.is_open() and time.monotonic() < deadline:
                ws.update(timeout=1)
                if ws.peek_stdout():
                    out.append(ws.read_stdout())
                if ws.peek_stderr():
                    err.append(ws.read_stderr())
            status = ws.read_channel(3)
        finally:
            ws.close()
            ws.sock.shutdown()  # close() leaves the socket open when the server closed first
        result = yaml.safe_load(status) if status else None
        if not isinstance(result, dict) or result.get("status") != "Success":
            why = result.get("message", "no exit status") if isinstance(result, dict) else status
            raise CommandFailed(f"{what}: {why}: {''.join(err).strip()[-500:]}")
        return "".join(out)

    # ---- the steps of a restore ---------------------------------------------------------------

    def placement(self) -> Placement:
        return read_placement(self.url)

    def stop(self) -> None:
        with redis_errors(f"quiesce {self.url}"):
            client = self.url.client()
            try:
                client.config_set("save", "")
                client.config_set("appendonly", "no")
            finally:
                client.close()

    def put_in_place(self, snapshot_file: Path, where: Placement, suffix: str) -> list[str]:
        tmp = f".{where.dbfilename}.dr-restore"
        self._exec(["tar", "xf", "-", "-C", where.dir], _tar(snapshot_file, tmp))
        script = (
            'cd "$1" && for f in "$2" "$3"; do if [ -e "$f" ]; then '
            'n="$f.$5"; i=2; while [ -e "$n" ]; do n="$f.$5_$i"; i=$((i+1)); done; '
            'mv "$f" "$n" && echo "$n"; fi; done; '
            'chown "$(stat -c %u:%g .)" "$4" 2>/dev/null; mv "$4" "$2"'
        )
        names = [where.dir, where.dbfilename, where.appenddirname, tmp, suffix]
        kept = self._exec(["sh", "-c", script, "sh", *names])
        return [posixpath.join(where.dir, n) for n in kept.split()]

    def _restart_with(self, args: list[str]) -> None:
        """Replace the pod with one whose container runs with ``args``; wait until the new
        server (another run_id) has loaded its data."""
        before = read_facts_run_id(self.url)
        self._set_args(args)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                run_id = read_facts_run_id(self.url)
                if run_id is not None and run_id != before and not read_facts(self.url).loading:
                    return
            except (TransientError, PermanentError):
                pass  # the old server is gone, the new one not up yet
            if time.monotonic() > deadline:
                raise TransientError(
                    f"the new pod of {self.namespace}/{self.workload} did not serve Redis "
                    f"within {self.timeout_s:g}s"
                )
            time.sleep(0.1)

    def start_without_aof(self, where: Placement) -> None:
        _, container = self._containers()
        self._args_before = list(container.get("args") or [])
        self._restart_with([*self._args_before, *_LOADING_ARGS])

    def facts(self) -> ServerFacts:
        return read_facts(self.url)

    def enable_aof(self) -> None:
        RedisServer(self.url, [], self.timeout_s).enable_aof()
        if self._args_before is not None:
            self._restart_with(self._args_before)


def _tar(path: Path, name: str) -> Iterator[bytes]:
    """A tar stream of one file (``name``, mode 0640), read in chunks: memory stays bounded."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = path.stat().st_size, 0o640, int(time.time())
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
    pad = -info.size % tarfile.BLOCKSIZE
    end = 2 * tarfile.BLOCKSIZE  # the end-of-archive marker; then a whole record, like tar
    written = len(info.tobuf(format=tarfile.GNU_FORMAT)) + info.size + pad + end
    yield b"\0" * (pad + end + (-written % tarfile.RECORDSIZE))


def read_facts_run_id(url: RedisURL) -> str | None:
    """The server's run_id (changes with every start), None when it does not answer."""
    try:
        with redis_errors(f"read INFO of {url}"):
            client = url.client()
            try:
                return str(client.info("server").get("run_id"))
            finally:
                client.close()
    except TransientError:
        return None
