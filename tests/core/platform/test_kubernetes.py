"""KubernetesPlatform through the real client, over HTTP, against the API emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tasks.core.errors import ConfigError, DRError, PermanentError, TransientError
from tasks.core.pgcluster import free_port
from tasks.core.platform import ScaleState
from tasks.core.platform.kubernetes import RESTARTED_AT, SCALED_DOWN_FROM, KubernetesPlatform
from tests.k8s_emulator import Emulator, k8s_emulator  # noqa: F401 - the fixture

WORKLOADS = {"backend": "Deployment", "db": "StatefulSet", "worker": "Deployment"}


@pytest.fixture
def k8s(k8s_emulator: Emulator) -> Emulator:  # noqa: F811 - the imported fixture
    """backend (Deployment, 2), db (StatefulSet, 1) and worker (Deployment, 0)."""
    k8s_emulator.seed_deployment("backend", replicas=2)
    k8s_emulator.seed_statefulset("db", replicas=1)
    k8s_emulator.seed_deployment("worker", replicas=0)
    return k8s_emulator


@pytest.fixture
def platform(k8s: Emulator) -> Iterator[KubernetesPlatform]:
    with KubernetesPlatform("dr", WORKLOADS, kubeconfig=k8s.kubeconfig, poll_interval_s=0.02) as p:
        yield p


def _paths(k8s: Emulator, method: str) -> list[str]:
    return [r.path for r in k8s.state.requests if r.method == method]


def test_scale_down_returns_previous_replicas_and_scales_to_zero(
    k8s: Emulator, platform: KubernetesPlatform
) -> None:
    state = platform.scale_down(["backend", "db", "worker"])

    assert state == ScaleState({"backend": 2, "db": 1, "worker": 0})
    assert platform.replicas(["backend", "db", "worker"]) == {"backend": 0, "db": 0, "worker": 0}
    assert k8s.state.workload("db", "StatefulSet")["spec"]["replicas"] == 0
    annotations = k8s.state.workload("backend")["metadata"]["annotations"]
    assert annotations[SCALED_DOWN_FROM] == "2"  # recorded in the cluster, for a retry
    assert "/apis/apps/v1/namespaces/dr/deployments/backend/scale" in _paths(k8s, "PATCH")
    assert "/apis/apps/v1/namespaces/dr/statefulsets/db/scale" in _paths(k8s, "PATCH")


def test_scale_up_restores_exactly_the_recorded_replicas(
    k8s: Emulator, platform: KubernetesPlatform
) -> None:
    state = platform.scale_down(["backend", "db", "worker"])
    platform.scale_up(state)

    assert platform.replicas(["backend", "db", "worker"]) == {"backend": 2, "db": 1, "worker": 0}
    assert k8s.state.workload("backend")["spec"]["replicas"] == 2


def test_wait_ready_waits_for_replicas_that_lag_behind_the_spec(
    k8s: Emulator, platform: KubernetesPlatform
) -> None:
    k8s.state.lag_s = 0.05  # one pod every 50 ms
    state = platform.scale_down(["backend", "db"])
    assert platform.wait_ready({"backend": 0, "db": 0}, timeout_s=10) == {"backend": 0, "db": 0}
    assert "readyReplicas" not in k8s.state.workload("backend")["status"]  # omitted at 0
    polls_before = len(_paths(k8s, "GET"))

    platform.scale_up(state)
    assert platform.wait_ready({"backend": 2, "db": 1}, timeout_s=10) == {"backend": 2, "db": 1}

    assert k8s.state.workload("backend")["status"]["readyReplicas"] == 2
    assert k8s.state.workload("db", "StatefulSet")["status"]["readyReplicas"] == 1
    assert len(_paths(k8s, "GET")) - polls_before > 2  # it polled while pods came up


def test_wait_ready_names_the_workload_that_never_becomes_ready(
    k8s: Emulator, platform: KubernetesPlatform
) -> None:
    k8s.state.seed_workload("stuck", replicas=2, ready=0, frozen=True)
    stuck = KubernetesPlatform(
        "dr", {**WORKLOADS, "stuck": "Deployment"}, kubeconfig=k8s.kubeconfig, poll_interval_s=0.02
    )
    with stuck, pytest.raises(TransientError) as caught:
        stuck.wait_ready({"backend": 2, "stuck": 2}, timeout_s=0.3)

    assert "stuck 0/2 ready" in str(caught.value)
    assert "backend" not in str(caught.value)


def test_waiting_for_zero_waits_until_no_pod_is_left(
    k8s: Emulator, platform: KubernetesPlatform
) -> None:
    k8s.state.freeze("backend")  # the controller stops: the 2 pods never go away
    platform.scale_down(["backend"])

    with pytest.raises(TransientError, match=r"backend still running \(2\)"):
        platform.wait_ready({"backend": 0}, timeout_s=0.2)

    k8s.state.freeze("backend", frozen=False)
    assert platform.wait_ready({"backend": 0}, timeout_s=10) == {"backend": 0}


def test_wait_ready_rides_out_api_blips_until_the_deadline(
    k8s: Emulator, platform: KubernetesPlatform
) -> None:
    platform.scale_down(["backend"])
    k8s.state.fail_next(2, 503)
    assert platform.wait_ready({"backend": 0}, timeout_s=10) == {"backend": 0}

    k8s.state.fail_next(1000, 503)
    with pytest.raises(TransientError, match=r"timed out after 0.2s .*503"):
        platform.wait_ready({"backend": 0}, timeout_s=0.2)


@pytest.mark.parametrize(("workload", "kind"), [("backend", "Deployment"), ("db", "StatefulSet")])
def test_rollout_restart_stamps_the_template_and_waits_for_the_new_pods(
    k8s: Emulator, platform: KubernetesPlatform, workload: str, kind: str
) -> None:
    before = k8s.state.workload(workload, kind)
    k8s.state.lag_s = 0.05
    platform.rollout_restart([workload])

    after = k8s.state.workload(workload, kind)
    stamp = after["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    assert datetime.fromisoformat(stamp).tzinfo is not None
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1

    replicas = before["spec"]["replicas"]
    assert platform.wait_ready({workload: replicas}, timeout_s=10) == {workload: replicas}
    status = k8s.state.workload(workload, kind)["status"]
    assert status["observedGeneration"] == after["metadata"]["generation"]
    assert status["updatedReplicas"] == replicas  # every pod runs the restarted template


def test_write_secret_creates_then_merges_keys(k8s: Emulator, platform: KubernetesPlatform) -> None:
    platform.write_secret("app-secrets", {"DB_PASSWORD": "first", "API_KEY": "key-1"})
    platform.write_secret("app-secrets", {"DB_PASSWORD": "second\nline ü"})

    expected = {"DB_PASSWORD": "second\nline ü", "API_KEY": "key-1"}
    assert platform.read_secret("app-secrets") == expected
    assert k8s.state.secret_values("app-secrets") == expected  # stored base64, decoded here
    assert _paths(k8s, "POST") == ["/api/v1/namespaces/dr/secrets"]  # created once


def test_secret_errors_never_contain_values(k8s: Emulator, platform: KubernetesPlatform) -> None:
    value = "hunter2-very-secret"
    with pytest.raises(ConfigError, match="app-secrets") as missing:
        platform.read_secret("app-secrets")
    k8s.state.fail_next(1, 503, match="secrets")
    with pytest.raises(TransientError) as unavailable:
        platform.write_secret("app-secrets", {"DB_PASSWORD": value})

    platform.write_secret("app-secrets", {"DB_PASSWORD": value})
    # a response the client cannot validate: pydantic's own message would quote the data
    k8s.state.objects[k8s.state.path("Secret", "app-secrets")]["data"] = [value]
    with pytest.raises(PermanentError) as invalid:
        platform.read_secret("app-secrets")

    assert invalid.value.__cause__ is None
    for exc in (missing.value, unavailable.value, invalid.value):
        assert value not in str(exc)


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec: {containers: [{name: shop, image: "example/shop:2"}]}
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: shop}
spec:
  selector: {app: shop}
  ports: [{port: 80, targetPort: 8000}]
---
"""
CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "shop-config", "namespace": "shop"},
    "data": {"LOG_LEVEL": "info"},
}


def test_apply_manifests_applies_a_directory_and_is_idempotent(
    k8s: Emulator, platform: KubernetesPlatform, tmp_path: Path
) -> None:
    # the namespace's file sorts last: it must still be applied first
    manifests = _write(
        tmp_path / "k8s",
        {
            "app.yaml": DEPLOYMENT,
            "config.json": json.dumps({"apiVersion": "v1", "kind": "List", "items": [CONFIGMAP]}),
            "zz-namespace.yml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
            "README.md": "not a manifest",
        },
    )
    applied = platform.apply_manifests(manifests)

    assert applied == ["Namespace/shop", "Deployment/shop", "Service/shop", "ConfigMap/shop-config"]
    patches = [r for r in k8s.state.requests if r.method == "PATCH"]
    assert [r.path for r in patches] == [
        "/api/v1/namespaces/shop",
        "/apis/apps/v1/namespaces/shop/deployments/shop",
        "/api/v1/namespaces/shop/services/shop",
        "/api/v1/namespaces/shop/configmaps/shop-config",
    ]
    for r in patches:
        assert r.content_type == "application/apply-patch+yaml"
        assert r.query == {"fieldManager": ["dr-pipelines"], "force": ["true"]}
    deployment = k8s.state.objects["/apis/apps/v1/namespaces/shop/deployments/shop"]
    assert deployment["spec"]["replicas"] == 2
    assert [e["manager"] for e in deployment["metadata"]["managedFields"]] == ["dr-pipelines"]
    snapshot = json.dumps(k8s.state.objects, sort_keys=True)

    assert platform.apply_manifests(manifests) == applied
    assert json.dumps(k8s.state.objects, sort_keys=True) == snapshot  # nothing changed


def test_apply_manifests_checks_every_file_before_applying_anything(
    k8s: Emulator, platform: KubernetesPlatform, tmp_path: Path
) -> None:
    manifests = _write(
        tmp_path / "k8s",
        {
            "a.json": json.dumps(CONFIGMAP),
            "b.yaml": "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
        },
    )
    with pytest.raises(ConfigError, match=r"b\.yaml: kind Widget \(example\.com/v1\)"):
        platform.apply_manifests(manifests)
    assert _paths(k8s, "PATCH") == []


def test_invalid_yaml_is_reported_by_line_without_its_content(
    platform: KubernetesPlatform, tmp_path: Path
) -> None:
    manifests = _write(
        tmp_path / "k8s",
        {"secret.yaml": "apiVersion: v1\nkind: Secret\nstringData:\n  password: hunter2: x\n"},
    )
    with pytest.raises(ConfigError, match="line 4") as caught:
        platform.apply_manifests(manifests)
    assert "hunter2" not in str(caught.value)


def test_unknown_workload_is_a_config_error_before_any_change(
    k8s: Emulator, platform: KubernetesPlatform
) -> None:
    with pytest.raises(ConfigError, match="unknown workload 'frontend'"):
        platform.scale_down(["backend", "frontend"])
    assert _paths(k8s, "PATCH") == []
    with pytest.raises(ConfigError, match="not Deployment or StatefulSet"):
        KubernetesPlatform("dr", {"x": "DaemonSet"}, kubeconfig=k8s.kubeconfig)  # type: ignore[dict-item]


def test_a_configured_workload_missing_from_the_cluster_is_a_config_error(
    k8s: Emulator,
) -> None:
    with (
        KubernetesPlatform("dr", {"ghost": "Deployment"}, kubeconfig=k8s.kubeconfig) as p,
        pytest.raises(ConfigError, match=r'not found \(deployments.apps "ghost" not found\)'),
    ):
        p.replicas(["ghost"])


@pytest.mark.parametrize(
    ("code", "error", "words"),
    [
        (403, ConfigError, "forbidden (403): check RBAC"),
        (409, TransientError, "409"),
        (422, PermanentError, "422"),
        (429, TransientError, "429"),
        (500, TransientError, "500"),
        (503, TransientError, "503"),
    ],
)
def test_api_errors_map_onto_the_error_tree(
    k8s: Emulator, platform: KubernetesPlatform, code: int, error: type[DRError], words: str
) -> None:
    k8s.state.fail_next(1, code)
    with pytest.raises(error) as caught:
        platform.scale_down(["backend"])
    assert type(caught.value) is error
    assert words in str(caught.value)
    assert "Deployment dr/backend" in str(caught.value)
    assert platform.replicas(["backend"]) == {"backend": 2}  # nothing was changed


def test_a_retried_scale_down_returns_the_replicas_from_before_the_first_attempt(
    k8s: Emulator, platform: KubernetesPlatform
) -> None:
    k8s.state.fail_next(1, 503, match="PATCH /apis/apps/v1/namespaces/dr/statefulsets/db/scale")
    with pytest.raises(TransientError) as caught:
        platform.scale_down(["backend", "db"])
    assert "already set before the failure: backend=0" in str(caught.value)
    assert "replicas before: backend=2, db=1" in str(caught.value)

    state = platform.scale_down(["backend", "db"])  # the retry finds backend at 0 already
    assert state == ScaleState({"backend": 2, "db": 1})

    platform.scale_up(state)
    assert platform.replicas(["backend", "db"]) == {"backend": 2, "db": 1}
    assert SCALED_DOWN_FROM not in k8s.state.workload("backend")["metadata"]["annotations"]


def test_credentials_and_reachability(k8s: Emulator, tmp_path: Path) -> None:
    wrong_token = tmp_path / "wrong-token"
    wrong_token.write_text(k8s.kubeconfig.read_text().replace("emulator-token", "stale"))
    with (
        KubernetesPlatform("dr", WORKLOADS, kubeconfig=wrong_token) as p,
        pytest.raises(ConfigError, match="unauthorized"),
    ):
        p.replicas(["backend"])

    down = tmp_path / "down"
    down.write_text(k8s.kubeconfig.read_text().replace(k8s.url, f"http://127.0.0.1:{free_port()}"))
    with (
        KubernetesPlatform("dr", WORKLOADS, kubeconfig=down) as p,
        pytest.raises(TransientError, match="unreachable"),
    ):
        p.replicas(["backend"])


def test_configuration_problems_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="cannot load the Kubernetes config"):
        KubernetesPlatform("dr", WORKLOADS, kubeconfig=tmp_path / "missing")
    # in a pod (no kubeconfig given): the service account, which is absent here
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(ConfigError, match="cannot load the Kubernetes config"):
        KubernetesPlatform("dr", WORKLOADS)


def test_emulator_rbac_refuses_what_the_role_does_not_grant(k8s: Emulator) -> None:
    """The scenario tests run the flows under the Role in deployments/ (tests/flows/conftest.py);
    this proves the emulator really refuses what that Role does not grant."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from tests.k8s_emulator import application_role

    k8s.seed_deployment("backend", replicas=2)
    k8s.state.enforce_role(application_role())
    api = client.AppsV1Api(config.new_client_from_config(str(k8s.kubeconfig)))
    assert api.read_namespaced_deployment_scale("backend", k8s.namespace).spec
    with pytest.raises(ApiException) as denied:
        api.delete_namespaced_deployment("backend", k8s.namespace)
    assert denied.value.status == 403
    assert 'cannot delete resource "deployments"' in json.loads(denied.value.body)["message"]
    with pytest.raises(ApiException):
        api.list_namespaced_deployment(k8s.namespace)
    assert k8s.state.denied == ["delete deployments (apps)", "list deployments (apps)"]
