"""deployments/: the worker image, the Kubernetes work pool's base job template, the manifests.

No cluster, no Docker engine and no prefect-kubernetes here, so this checks what can be checked
without them: every manifest against the ``kubernetes`` client's models (which refuse unknown
fields and wrong types), the base job template against the Prefect server's own validation and
Prefect's default Kubernetes template, the Job it renders, the RBAC Roles against the API calls
the code makes (recorded by the Kubernetes API emulator), the manifests applied to the emulator
through ``KubernetesPlatform.apply_manifests``, and the Dockerfile by reading it.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes.client
import prefect
import pytest
import yaml
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import apply_values

from tasks.core.config import load_config
from tasks.core.platform.kubernetes import _RESOURCES, KubernetesPlatform
from tests.k8s_emulator import Emulator, run_emulator

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENTS = REPO / "deployments"
MANIFESTS = DEPLOYMENTS / "kubernetes"
TEMPLATE = DEPLOYMENTS / "work-pool" / "kubernetes-base-job-template.json"
DOCKERFILE = DEPLOYMENTS / "Dockerfile"

DR_NAMESPACE = "dr-pipelines"
POOL = "dr-kubernetes"

# (apiGroup, resource, verb) of every call KubernetesPlatform makes in the application's
# namespace, by method of tasks/core/platform/kubernetes.py. The emulator test below records the
# real calls and checks that they are exactly these.
PLATFORM_CALLS = {
    ("apps", "deployments/scale", "get"),  # _scale: replicas, wait_ready (_pods)
    ("apps", "statefulsets/scale", "get"),
    ("apps", "deployments/scale", "patch"),  # _scale: scale_down, scale_up
    ("apps", "statefulsets/scale", "patch"),
    ("apps", "deployments", "get"),  # _read: scale_down (_replicas_before), wait_ready (_ready)
    ("apps", "statefulsets", "get"),
    ("apps", "deployments", "patch"),  # _patch: the replicas annotation, rollout_restart
    ("apps", "statefulsets", "patch"),
    ("", "pods", "list"),  # _pods: waiting for 0 counts the pods that still exist
    ("", "secrets", "get"),  # read_secret
    ("", "secrets", "patch"),  # write_secret
    ("", "secrets", "create"),  # write_secret, when the Secret does not exist yet
}
# apply_manifests (server-side apply: PATCH, which also needs create for a missing object) of the
# application's manifests: the kinds the application Role grants it for.
MANIFEST_KINDS = {
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("", "configmaps"),
    ("", "services"),
    ("", "secrets"),
}
# What the Prefect Kubernetes worker (prefect-kubernetes 0.8.0: worker.py, observer.py) calls in
# its namespace: create/read/list/delete Jobs, list pods, read a crashed pod's log, and the
# observer's watches of Jobs and pods. No Secrets (no API key, env not stored as Secrets).
WORKER_CALLS = {
    ("batch", "jobs", "create"),
    ("batch", "jobs", "get"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "jobs", "delete"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods/log", "get"),
}


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(MANIFESTS.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path, doc))
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def _template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text(encoding="utf-8"))


def _rendered_job() -> dict[str, Any]:
    """The Job of a flow run with the template's defaults, as the worker builds it (the env
    dict becomes a list; unset placeholders, such as the command, are dropped)."""
    template = _template()
    properties = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in properties.items() if v.get("default") is not None}
    config = copy.deepcopy(template["job_configuration"])
    config["env"] = defaults["env"]
    rendered = apply_values(config, defaults)
    job = rendered["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    return job


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for _, d in _documents()
        if d["kind"] in ("Deployment", "StatefulSet")
    ]
    return [*specs, ("work pool Job", _rendered_job()["spec"]["template"]["spec"])]


# -- the manifests -------------------------------------------------------------------------------


def test_every_manifest_is_a_complete_object_the_api_schema_accepts() -> None:
    docs = _documents()
    assert {p.name for p, _ in docs} >= {"00-namespace.yaml", "60-worker.yaml"}
    for path, doc in docs:
        where = f"{path.relative_to(REPO)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        assert doc.get("apiVersion"), where
        assert doc.get("kind"), where
        assert doc["metadata"].get("name"), where
        if doc["kind"] != "Namespace":  # explicit, so that `kubectl apply` never uses `default`
            assert doc["metadata"].get("namespace"), where
        version = doc["apiVersion"].rsplit("/", 1)[-1].capitalize()
        model = getattr(kubernetes.client, f"{version}{doc['kind']}")
        model.model_validate(doc)  # unknown fields and wrong types are errors


def test_pods_meet_the_restricted_pod_security_standard_their_namespace_enforces() -> None:
    labels = _one("Namespace", DR_NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for where, spec in _pod_specs():
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("runAsUser", 0) != 0, where
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork"), where
        assert not spec.get("hostPID"), where
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        for container in spec["containers"]:
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged"), where


def test_the_pieces_refer_to_each_other_by_the_right_names() -> None:
    server = _one("Deployment", "prefect-server")
    service = _one("Service", "prefect-server")
    worker = _one("Deployment", "dr-worker")
    (server_container,) = server["spec"]["template"]["spec"]["containers"]
    assert server_container["image"] == f"prefecthq/prefect:{prefect.__version__}-python3.11"
    assert server_container["args"][:3] == ["prefect", "server", "start"]
    env = {e["name"]: e for e in server_container["env"]}
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"]["valueFrom"]["secretKeyRef"]["name"]
    assert (
        service["spec"]["selector"].items()
        <= server["spec"]["template"]["metadata"]["labels"].items()
    )

    (container,) = worker["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:3] == ["prefect", "worker", "start"]
    assert args[args.index("--pool") + 1] == POOL
    assert args[args.index("--type") + 1] == "kubernetes"
    assert "--no-create-pool-if-not-found" in args
    worker_env = {e["name"]: e.get("value") for e in container["env"]}
    port = service["spec"]["ports"][0]["port"]
    assert worker_env["PREFECT_API_URL"] == f"http://prefect-server.{DR_NAMESPACE}.svc:{port}/api"
    assert worker_env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == DR_NAMESPACE
    assert worker["spec"]["template"]["spec"]["serviceAccountName"] == "dr-worker"
    _one("ServiceAccount", "dr-worker")

    # the flow runs' identity, config and secret are the ones the template uses
    defaults = {k: v.get("default") for k, v in _template()["variables"]["properties"].items()}
    assert defaults["namespace"] == DR_NAMESPACE
    _one("ServiceAccount", defaults["service_account_name"])
    _one("ConfigMap", defaults["config_map_name"])
    binding = _one("RoleBinding", "dr-pipelines")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": defaults["service_account_name"],
            "namespace": DR_NAMESPACE,
        }
    ]
    # the disruption budget selects the flow-run pods
    pod_labels = _rendered_job()["spec"]["template"]["metadata"]["labels"]
    pdb = _one("PodDisruptionBudget", "dr-flow-runs")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_config_map_holds_a_valid_dr_toml_for_the_flow_runs(tmp_path: Path) -> None:
    text = _one("ConfigMap", "dr-pipelines-config")["data"]["dr.toml"]
    (tmp_path / "dr.toml").write_text(text)
    cfg = load_config(tmp_path / "dr.toml")
    assert cfg.platform.kind == "kubernetes"
    assert cfg.platform.kubeconfig is None  # the pod's service account
    role = _one("Role", "dr-pipelines")
    assert role["metadata"]["namespace"] == cfg.platform.namespace
    assert _one("RoleBinding", "dr-pipelines")["metadata"]["namespace"] == cfg.platform.namespace
    # the local backup directory is on the pod's scratch volume (the image's root is not writable)
    mounts = {m["name"]: m["mountPath"] for m in _job_container()["volumeMounts"]}
    assert cfg.storage.backup_dir.is_relative_to(mounts["scratch"])
    assert cfg.storage.s3_bucket  # the durable copy: the pod's disk goes with the pod
    env = {e["name"]: e["value"] for e in _job_container()["env"]}
    assert Path(env["DR_CONFIG"]).parent == Path(mounts["dr-config"])
    assert Path(env["DR_CONFIG"]).name == "dr.toml"


# -- RBAC ----------------------------------------------------------------------------------------


def test_no_role_grants_wildcards_or_privilege_escalation() -> None:
    for _, doc in _documents():
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: nothing cluster-wide")
        if doc["kind"] != "Role":
            continue
        for group, resource, verb in _grants(doc):
            assert "*" not in (group, resource, verb), doc["metadata"]["name"]
            assert verb not in ("escalate", "bind", "impersonate", "deletecollection")


def test_the_application_role_grants_exactly_what_the_platform_calls() -> None:
    role = _one("Role", "dr-pipelines")
    needed = PLATFORM_CALLS | {
        (group, resource, verb)
        for group, resource in MANIFEST_KINDS
        for verb in ("patch", "create")
    }
    assert _grants(role) == needed


def test_the_worker_role_grants_exactly_what_the_kubernetes_worker_calls() -> None:
    role = _one("Role", "dr-worker")
    assert role["metadata"]["namespace"] == DR_NAMESPACE
    assert _grants(role) == WORKER_CALLS
    binding = _one("RoleBinding", "dr-worker")
    assert binding["roleRef"]["name"] == "dr-worker"
    assert binding["subjects"][0]["name"] == "dr-worker"


_REQUEST_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)


def _rbac(method: str, path: str, content_type: str | None) -> tuple[str, str, set[str]]:
    """The apiGroup, resource and RBAC verbs a request needs."""
    m = _REQUEST_PATH.match(path)
    assert m is not None, path
    resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        verbs = {"get"} if m["name"] else {"list"}
    elif method == "PATCH" and content_type == "application/apply-patch+yaml":
        verbs = {"patch", "create"}  # server-side apply creates an object that is missing
    else:
        verbs = {{"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]}
    return m["group"] or "", resource, verbs


def test_the_calls_the_platform_makes_are_granted_by_the_application_role(
    tmp_path: Path,
) -> None:
    """Every recovery action of KubernetesPlatform against the emulator, in the namespace of
    the Role; each request it sends must be allowed by the Role."""
    ns = _one("Role", "dr-pipelines")["metadata"]["namespace"]
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.yaml").write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}},
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
                },
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "web", "image": "example/web:1"}]},
                        },
                    },
                },
            ]
        )
    )
    with run_emulator(tmp_path) as k8s:
        k8s.state.create_namespace(ns)
        k8s.state.seed_workload("backend", kind="Deployment", replicas=2, namespace=ns)
        k8s.state.seed_workload("db", kind="StatefulSet", replicas=1, namespace=ns)
        workloads = {"backend": "Deployment", "db": "StatefulSet"}
        with KubernetesPlatform(
            ns, workloads, kubeconfig=k8s.kubeconfig, poll_interval_s=0.01
        ) as platform:
            state = platform.scale_down(["backend", "db"])  # database corruption, data loss
            platform.wait_ready({"backend": 0, "db": 0}, 10)
            platform.scale_up(state)
            platform.wait_ready(state.replicas, 10)
            platform.write_secret("app-secrets", {"JWT_SECRET": "a"})  # security breach
            platform.write_secret("app-secrets", {"JWT_SECRET": "b"})
            assert platform.read_secret("app-secrets") == {"JWT_SECRET": "b"}
            platform.rollout_restart(["backend", "db"])
            platform.wait_ready({"backend": 2, "db": 1}, 10)
            platform.apply_manifests(app)  # infrastructure loss
        calls: set[tuple[str, str, str]] = set()  # the recovery actions
        applied: set[tuple[str, str, str]] = set()  # server-side apply of the app's manifests
        for r in k8s.state.requests:
            assert f"/namespaces/{ns}/" in r.path
            group, resource, verbs = _rbac(r.method, r.path, r.content_type)
            into = applied if r.content_type == "application/apply-patch+yaml" else calls
            into |= {(group, resource, verb) for verb in verbs}
    assert calls == PLATFORM_CALLS  # the list above is exact
    assert {(g, r) for g, r, _ in applied} <= MANIFEST_KINDS
    granted = _grants(_one("Role", "dr-pipelines"))
    assert calls | applied <= granted, sorted((calls | applied) - granted)


# -- the manifests on the emulator ---------------------------------------------------------------


def test_the_manifests_apply_through_the_platform_and_reapply_as_no_change(
    tmp_path: Path,
) -> None:
    """The kinds apply_manifests supports (RBAC is not among them) go to the emulator by
    server-side apply, Namespace first; a second apply changes nothing."""
    supported = [doc for _, doc in _documents() if (doc["apiVersion"], doc["kind"]) in _RESOURCES]
    kinds = {d["kind"] for d in supported}
    assert kinds >= {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service"}
    directory = tmp_path / "manifests"
    directory.mkdir()
    for i, doc in enumerate(supported):
        (directory / f"{i:02d}.json").write_text(json.dumps(doc))
    with run_emulator(tmp_path) as k8s, _platform(k8s) as platform:
        applied = platform.apply_manifests(directory)
        assert applied[0] == f"Namespace/{DR_NAMESPACE}"
        assert sorted(applied) == sorted(f"{d['kind']}/{d['metadata']['name']}" for d in supported)
        worker = k8s.state.objects[f"/apis/apps/v1/namespaces/{DR_NAMESPACE}/deployments/dr-worker"]
        assert worker["spec"]["template"]["spec"]["serviceAccountName"] == "dr-worker"
        snapshot = json.dumps(k8s.state.objects, sort_keys=True)
        assert platform.apply_manifests(directory) == applied
        assert json.dumps(k8s.state.objects, sort_keys=True) == snapshot


def _platform(k8s: Emulator) -> KubernetesPlatform:
    return KubernetesPlatform(DR_NAMESPACE, {}, kubeconfig=k8s.kubeconfig)


# -- the work pool's base job template -----------------------------------------------------------


def _job_container() -> dict[str, Any]:
    container: dict[str, Any] = _rendered_job()["spec"]["template"]["spec"]["containers"][0]
    return container


def _prefect_default_kubernetes_template() -> dict[str, Any]:
    """Prefect's default base job template for Kubernetes pools, as this Prefect's server
    serves it offline (`prefect work-pool get-default-base-job-template --type kubernetes`)."""
    views = Path(prefect.__file__).parent / "server/api/collections_data/views"
    metadata = json.loads((views / "aggregate-worker-metadata.json").read_text())
    template: dict[str, Any] = metadata["prefect-kubernetes"]["kubernetes"][
        "default_base_job_configuration"
    ]
    return template


def test_the_base_job_template_is_one_the_prefect_server_accepts() -> None:
    template = _template()
    assert set(template) == {"job_configuration", "variables"}
    # the server's validation: every {{ placeholder }} is a declared variable
    WorkPoolCreate(name=POOL, type="kubernetes", base_job_template=template)
    # everything Prefect's default template has is kept (the worker reads these fields)
    default = _prefect_default_kubernetes_template()
    assert set(default["job_configuration"]) <= set(template["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
    for key in ("cluster_config", "job_watch_timeout_seconds", "pod_watch_timeout_seconds"):
        assert template["job_configuration"][key] == default["job_configuration"][key]
    # prefect-kubernetes 0.8.0 refuses a job manifest without these (checked by hand with it)
    pod_spec = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod_spec["parallelism"] == 1
    assert pod_spec["completions"] == 1


def test_the_job_of_a_flow_run_is_a_valid_job_with_the_dr_settings() -> None:
    job = _rendered_job()
    checked = copy.deepcopy(job)
    pod_spec = checked["spec"]["template"]["spec"]
    del pod_spec["parallelism"], pod_spec["completions"]  # Prefect's quirk; the API drops them
    kubernetes.client.V1Job.model_validate(checked)

    assert job["spec"]["backoffLimit"] == 0  # Kubernetes never reruns a recovery
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert "activeDeadlineSeconds" not in job["spec"]  # a pause for approval may last an hour
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "dr-pipelines"
    assert spec["restartPolicy"] == "Never"
    container = _job_container()
    assert container["image"].endswith("/dr-pipelines:0.1.0")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DR_CONFIG"] == "/etc/dr/dr.toml"
    # an evicted run ends Crashed instead of being rescheduled by Prefect
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "crash"
    assert container["envFrom"] == [{"secretRef": {"name": "dr-pipelines-env"}}]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dr-config"]["configMap"]["name"] == "dr-pipelines-config"
    assert "emptyDir" in volumes["scratch"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["dr-config"] == {"name": "dr-config", "mountPath": "/etc/dr", "readOnly": True}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"


# -- the image -----------------------------------------------------------------------------------


def _dockerfile() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """ARG defaults and (instruction, argument) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, argument = line.partition(" ")
            steps.append((instruction.upper(), argument.strip()))
    args = dict(a.partition("=")[::2] for i, a in steps if i == "ARG")
    return args, steps


def test_the_image_has_the_tools_of_the_server_major_version() -> None:
    args, steps = _dockerfile()
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert [a for i, a in steps if i == "FROM"] == ["${PYTHON_IMAGE}"]
    assert args["PG_MAJOR"] == "15"
    runs = " ".join(a for i, a in steps if i == "RUN")
    installs = [
        shlex.split(cmd.split("install", 1)[1])
        for cmd in re.split(r";|&&", runs)
        if "apt-get install" in cmd
    ]
    assert installs
    assert all("--no-install-recommends" in words for words in installs)
    packages = {w for words in installs for w in words if not w.startswith("-")}
    assert "postgresql-client-${PG_MAJOR}" in packages  # from PGDG: any major, not Debian's 15
    assert "postgresql-common" in packages  # ships the PGDG signing key and repository script
    assert "/usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y" in runs
    assert {"redis-tools", "zstd", "ca-certificates", "tini"} <= packages
    assert any(p.startswith("pgbackrest") for p in packages)
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert "pip install --no-cache-dir ." in runs
    assert "/usr/lib/postgresql/${PG_MAJOR}/bin" in next(a for i, a in steps if i == "ENV")


def test_the_image_runs_the_worker_as_a_non_root_user() -> None:
    _, steps = _dockerfile()
    uid = [a for i, a in steps if i == "USER"][-1].split(":")[0]
    assert uid.isdigit()  # numeric: what runAsNonRoot can verify
    pod_user = _rendered_job()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert int(uid) == pod_user != 0
    assert [a for i, a in steps if i == "WORKDIR"] == ["/opt/dr-pipelines"]
    cmd = json.loads(next(a for i, a in steps if i == "CMD"))
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == POOL


def test_the_image_holds_what_pip_install_and_the_deployments_need() -> None:
    _, steps = _dockerfile()
    copied = {src.rstrip("/") for i, a in steps if i == "COPY" for src in a.split()[:-1]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", project["readme"], "prefect.yaml"} <= copied
    for deployment in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]:
        entry = deployment["entrypoint"].split(":")[0]
        assert entry.split("/")[0] in copied, deployment["name"]
    # the build context's ignore file lets every copied path through
    ignore = (DEPLOYMENTS / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert copied <= allowed
