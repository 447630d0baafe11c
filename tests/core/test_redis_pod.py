"""Restore into a Redis that runs in a Kubernetes pod, through the API only: the emulator serves
the API (exec over WebSocket runs on this machine), and a small kubelet stand-in restarts a real
redis-server whenever the StatefulSet's pod is replaced, with the container's args."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import AppsV1Api

from tasks.core.catalog import Catalog
from tasks.core.engines.redis import parse_redis_url
from tasks.core.engines.redis_pod import RedisPod
from tasks.core.platform.kubernetes import KubernetesPlatform, new_client
from tasks.core.redis_backup import backup_redis, plan_redis_restore, restore_redis
from tasks.core.storage.local import LocalStorage
from tests.k8s_emulator import Emulator
from tests.redis_server import RedisProcess

NS = "dr"


class Kubelet:
    """Runs the redis StatefulSet's one pod as a local redis-server: (re)starts it with the
    container's args whenever the emulated controller replaces the pod."""

    def __init__(self, k8s: Emulator, server: RedisProcess) -> None:
        self.k8s, self.server = k8s, server
        self.starts: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pod(self) -> tuple[str | None, list[str]]:
        state = self.k8s.state
        with state.lock:
            sts = state.workload("redis", "StatefulSet")
            pods = [
                p["metadata"]["name"]
                for p in state._pods(NS)
                if p["metadata"]["labels"].get("app") == "redis"
            ]
        args = sts["spec"]["template"]["spec"]["containers"][0].get("args") or []
        return (sorted(pods)[0] if pods else None), list(args)

    def _run(self) -> None:
        current = None
        while not self._stop.is_set():
            pod, args = self._pod()
            if pod != current and args:
                self.server.stop()
                self.server.command = ["redis-server", *args]
                self.server.start()
                self.starts.append(args)
                current = pod
            time.sleep(0.02)

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.server.stop()


@pytest.fixture
def pod_redis(k8s_emulator: Emulator, tmp_path: Path) -> Iterator[tuple[RedisProcess, Kubelet]]:
    k8s_emulator.seed_statefulset("redis", replicas=1)
    k8s_emulator.seed_deployment("backend", replicas=2)
    server = RedisProcess(tmp_path / "pod-data")
    production = [*server.command[1:], "--appendonly", "yes"]  # as the manifest runs it
    client = new_client(k8s_emulator.kubeconfig, None)
    try:
        sts = AppsV1Api(client).read_namespaced_stateful_set("redis", NS)
        containers = client.sanitize_for_serialization(sts)["spec"]["template"]["spec"][
            "containers"
        ]
        containers[0]["args"] = production
        AppsV1Api(client).patch_namespaced_stateful_set(
            "redis", NS, {"spec": {"template": {"spec": {"containers": containers}}}}
        )
    finally:
        client.close()
    with Kubelet(k8s_emulator, server) as kubelet:
        deadline = time.monotonic() + 20
        while not kubelet.starts and time.monotonic() < deadline:
            time.sleep(0.02)
        assert kubelet.starts == [production]
        yield server, kubelet


def test_restore_into_the_pod_of_a_statefulset(
    pod_redis: tuple[RedisProcess, Kubelet], k8s_emulator: Emulator, tmp_path: Path
) -> None:
    server, kubelet = pod_redis
    c = server.client()
    c.set("session", "s", ex=3600)
    c.rpush("queue", *range(100))
    server.client(3).set("other", "db")
    url = parse_redis_url(server.url)
    catalog = Catalog([LocalStorage(tmp_path / "backups")])
    m = backup_redis(url, catalog).manifest
    assert m.redis is not None
    assert m.redis.appendonly
    c.flushall()
    c.set("written-after-the-backup", "x")

    client = new_client(k8s_emulator.kubeconfig, None)
    platform = KubernetesPlatform(NS, {"backend": "Deployment"}, api_client=client)
    try:
        pod = RedisPod(url, client, NS, "redis", timeout_s=30)
        plan = plan_redis_restore(
            url, catalog.get(m.backup_id), mode="server", control="kubernetes", writers=("backend",)
        )
        done = restore_redis(plan, confirm=True, server=pod, platform=platform)
    finally:
        client.close()

    assert done.aof_rewritten
    assert {d: a for d, _, a in done.counts} == {"db0": 2, "db3": 1}
    assert any(Path(k).name.startswith("appendonlydir.pre_restore_") for k in done.kept)
    # the pod ran once with --appendonly no (loading the RDB), then with its own args again
    production = kubelet.starts[0]
    assert kubelet.starts[1:] == [[*production, "--appendonly", "no"], production]
    assert [r.path for r in k8s_emulator.state.requests if r.path.endswith("/exec")]
    assert k8s_emulator.state.workload("backend")["spec"]["replicas"] == 2  # writers back
    c = server.client()
    assert c.llen("queue") == 100
    assert not c.exists("written-after-the-backup")
    assert server.client(3).get("other") == b"db"
    assert int(c.info("persistence")["aof_enabled"]) == 1  # loaded from the rewritten AOF
