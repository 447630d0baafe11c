"""The application on Kubernetes, through the official client (``kubernetes`` 37.x).

Workloads are Deployments or StatefulSets in one namespace; the config says which. Replicas
change through the scale subresource (what ``kubectl scale`` does); a rollout restart patches the
pod template annotation ``kubectl.kubernetes.io/restartedAt`` (what ``kubectl rollout restart``
does); manifests go through server-side apply (``kubectl apply --server-side --force-conflicts``).

Readiness counts pods that are ready *and* run the current template, once the controller has
seen the latest spec, so waiting after a restart waits for the new pods, not the old ones.
Waiting for 0 counts the pods that still exist (terminating ones too): they may still write to
the database that is about to be restored.

Every SDK call goes through ``k8s_errors``, the one place that translates client exceptions.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import quote

import pydantic
import urllib3
import yaml
from kubernetes import config as k8s_config
from kubernetes.client import (
    ApiClient,
    AppsV1Api,
    Configuration,
    CoreV1Api,
    V1ObjectMeta,
    V1Secret,
)
from kubernetes.client.exceptions import ApiException

from tasks.core.errors import ConfigError, PermanentError, TransientError
from tasks.core.platform import ScaleState, poll_until_ready, scale_all

__all__ = [
    "RESTARTED_AT",
    "SCALED_DOWN_FROM",
    "KubernetesPlatform",
    "WorkloadKind",
    "k8s_errors",
    "new_client",
]

WorkloadKind = Literal["Deployment", "StatefulSet"]
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
SCALED_DOWN_FROM = "dr-pipelines/replicas-before-scale-down"
_TIMEOUT = (10.0, 60.0)  # seconds to connect, to read one response
_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# (apiVersion, kind) -> (resource, namespaced): the kinds apply_manifests knows how to address
_RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "Service"): ("services", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("apps/v1", "StatefulSet"): ("statefulsets", True),
    ("apps/v1", "DaemonSet"): ("daemonsets", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("batch/v1", "CronJob"): ("cronjobs", True),
    ("networking.k8s.io/v1", "Ingress"): ("ingresses", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("horizontalpodautoscalers", True),
}


def _server_message(exc: ApiException) -> str:
    """The API server's own explanation (a Status object's message), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or "")


@contextlib.contextmanager
def k8s_errors(what: str) -> Iterator[None]:
    """Translate Kubernetes client exceptions into the project's error tree (the only place
    that does). ``what`` names the action and object, e.g. ``scale Deployment prod/backend``.
    Messages carry the server's Status message and never a request or response body."""
    try:
        yield
    except ApiException as exc:
        status = exc.status or 0
        detail = _server_message(exc)
        if status == 404:
            raise ConfigError(
                f"cannot {what}: not found ({detail}): check the names and namespace in the config"
            ) from exc
        if status == 401:
            raise ConfigError(
                f"cannot {what}: unauthorized (401): the kubeconfig credentials were rejected"
            ) from exc
        if status == 403:
            raise ConfigError(f"cannot {what}: forbidden (403): check RBAC: {detail}") from exc
        if status in (409, 429) or status >= 500:
            raise TransientError(f"cannot {what}: Kubernetes API {status}: {detail}") from exc
        raise PermanentError(f"cannot {what}: Kubernetes API {status}: {detail}") from exc
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TransientError(f"Kubernetes API unreachable, cannot {what}: {reason}") from exc
    except pydantic.ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors(include_input=False)[:3]
        )
        # from None: pydantic's own text quotes the input, which may be a Secret's data
        raise PermanentError(
            f"cannot {what}: data that does not fit the client's {exc.title} model: {where}"
        ) from None
    except ValueError as exc:
        raise PermanentError(
            f"cannot {what}: unreadable response from the API ({type(exc).__name__})"
        ) from None


def new_client(kubeconfig: Path | None, context: str | None) -> ApiClient:
    """A client from ``kubeconfig``; in a pod with no kubeconfig given, the service account."""
    configuration = Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (k8s_config.ConfigException, yaml.YAMLError, OSError) as exc:
        source = kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config")
        raise ConfigError(
            f"cannot load the Kubernetes config from {source}: {type(exc).__name__}"
            + (f": {exc}" if isinstance(exc, k8s_config.ConfigException) else "")
        ) from exc
    return ApiClient(configuration)


@dataclass(frozen=True)
class _Manifest:
    """One object to apply, already checked: where it came from and where it goes."""

    source: Path
    label: str  # Kind/name
    path: str  # REST path of the object
    body: dict[str, Any]


class KubernetesPlatform:
    """Workloads in one namespace of a Kubernetes cluster (see the module docstring).

    ``api_client`` is for callers that already hold one (it is then theirs to close);
    otherwise one is built from ``kubeconfig``/``context`` and closed by ``close``.
    """

    name = "kubernetes"

    def __init__(
        self,
        namespace: str,
        workloads: Mapping[str, WorkloadKind],
        *,
        kubeconfig: Path | None = None,
        context: str | None = None,
        api_client: ApiClient | None = None,
        field_manager: str = "dr-pipelines",
        poll_interval_s: float = 0.5,
    ) -> None:
        for workload, kind in workloads.items():
            if kind not in get_args(WorkloadKind):
                raise ConfigError(
                    f"workload {workload!r}: kind {kind!r} is not Deployment or StatefulSet"
                )
        self.namespace = namespace
        self.field_manager = field_manager
        self.poll_interval_s = poll_interval_s
        self._kinds = dict(workloads)
        self._owns_client = api_client is None
        self._client = api_client if api_client is not None else new_client(kubeconfig, context)
        self._apps = AppsV1Api(self._client)
        self._core = CoreV1Api(self._client)

    def close(self) -> None:
        """Release the connections of a client this platform built."""
        if self._owns_client:
            self._client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> KubernetesPlatform:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- workloads ------------------------------------------------------------------------

    def _kind(self, workload: str) -> WorkloadKind:
        try:
            return self._kinds[workload]
        except KeyError:
            known = ", ".join(sorted(self._kinds)) or "none"
            raise ConfigError(f"unknown workload {workload!r} (configured: {known})") from None

    def _check(self, workloads: Sequence[str] | Mapping[str, int]) -> None:
        """Every name is configured: checked before anything is changed."""
        for workload in workloads:
            self._kind(workload)

    def _label(self, workload: str) -> str:
        return f"{self._kind(workload)} {self.namespace}/{workload}"

    def _scale(self, workload: str, replicas: int | None = None) -> tuple[int, str | None]:
        """Read (or, given ``replicas``, set) the scale subresource; returns the desired
        replicas and the label selector of the workload's pods."""
        kind, ns = self._kind(workload), self.namespace
        action = "read the scale of" if replicas is None else f"scale to {replicas}"
        body = {"spec": {"replicas": replicas}}
        with k8s_errors(f"{action} {self._label(workload)}"):
            if kind == "Deployment" and replicas is None:
                scale = self._apps.read_namespaced_deployment_scale(
                    workload, ns, _request_timeout=_TIMEOUT
                )
            elif kind == "Deployment":
                scale = self._apps.patch_namespaced_deployment_scale(
                    workload, ns, body, _request_timeout=_TIMEOUT
                )
            elif replicas is None:
                scale = self._apps.read_namespaced_stateful_set_scale(
                    workload, ns, _request_timeout=_TIMEOUT
                )
            else:
                scale = self._apps.patch_namespaced_stateful_set_scale(
                    workload, ns, body, _request_timeout=_TIMEOUT
                )
        desired = scale.spec.replicas if scale.spec is not None else None
        selector = scale.status.selector if scale.status is not None else None
        return desired or 0, selector

    def _read(self, workload: str) -> Any:
        """The Deployment or StatefulSet object, with its status."""
        kind, ns = self._kind(workload), self.namespace
        with k8s_errors(f"read {self._label(workload)}"):
            if kind == "Deployment":
                return self._apps.read_namespaced_deployment(
                    workload, ns, _request_timeout=_TIMEOUT
                )
            return self._apps.read_namespaced_stateful_set(workload, ns, _request_timeout=_TIMEOUT)

    def _patch(self, workload: str, body: dict[str, Any], action: str) -> None:
        """Strategic-merge patch of the Deployment or StatefulSet object."""
        kind, ns = self._kind(workload), self.namespace
        with k8s_errors(f"{action} {self._label(workload)}"):
            if kind == "Deployment":
                self._apps.patch_namespaced_deployment(
                    workload, ns, body, _request_timeout=_TIMEOUT
                )
            else:
                self._apps.patch_namespaced_stateful_set(
                    workload, ns, body, _request_timeout=_TIMEOUT
                )

    def replicas(self, workloads: Sequence[str]) -> dict[str, int]:
        self._check(workloads)
        return {w: self._scale(w)[0] for w in workloads}

    def _replicas_before(self, workload: str) -> int:
        """The replicas to restore: the current ones, or, for a workload at 0 that an earlier
        scale-down left there (a retry, a crashed run), the ones it recorded."""
        obj = self._read(workload)
        current = (obj.spec.replicas if obj.spec else None) or 0
        recorded = ((obj.metadata.annotations if obj.metadata else None) or {}).get(
            SCALED_DOWN_FROM
        )
        if current == 0 and isinstance(recorded, str) and recorded.isdigit():
            return int(recorded)
        return int(current)

    def scale_down(self, workloads: Sequence[str]) -> ScaleState:
        """Also records each workload's replicas in the annotation ``SCALED_DOWN_FROM`` before
        scaling it, so that a retried or repeated scale-down still returns them."""
        self._check(workloads)
        before = {w: self._replicas_before(w) for w in workloads}

        def to_zero(workload: str, _: int) -> None:
            if before[workload] > 0:
                record = {SCALED_DOWN_FROM: str(before[workload])}
                self._patch(workload, {"metadata": {"annotations": record}}, "annotate")
            self._scale(workload, 0)

        scale_all(dict.fromkeys(before, 0), to_zero, undo=before)
        return ScaleState(before)

    def scale_up(self, state: ScaleState) -> None:
        self._check(state.replicas)

        def restore(workload: str, replicas: int) -> None:
            self._scale(workload, replicas)
            forget = {SCALED_DOWN_FROM: None}  # null removes the annotation
            self._patch(workload, {"metadata": {"annotations": forget}}, "annotate")

        scale_all(state.replicas, restore)

    def _ready(self, workload: str) -> int:
        """Pods that are ready and run the current template (0 until the controller has
        observed the latest spec: until then its counts describe the previous one)."""
        obj = self._read(workload)
        status, generation = obj.status, obj.metadata.generation if obj.metadata else None
        if status is None or (status.observed_generation or 0) < (generation or 0):
            return 0
        # the API omits readyReplicas/updatedReplicas when they are 0
        return min(status.ready_replicas or 0, status.updated_replicas or 0)

    def _pods(self, workload: str) -> int:
        """Pods of the workload that still exist and have not finished (terminating ones too)."""
        desired, selector = self._scale(workload)
        if not selector:
            return desired
        with k8s_errors(f"list the pods of {self._label(workload)}"):
            pods = self._core.list_namespaced_pod(
                self.namespace, label_selector=selector, _request_timeout=_TIMEOUT
            )
        return sum(
            1
            for pod in pods.items
            if pod.status is None or pod.status.phase not in ("Succeeded", "Failed")
        )

    def wait_ready(self, workloads: Mapping[str, int], timeout_s: float) -> dict[str, int]:
        self._check(workloads)
        return poll_until_ready(
            workloads,
            lambda w, target: self._pods(w) if target == 0 else self._ready(w),
            timeout_s,
            self.poll_interval_s,
        )

    def rollout_restart(self, workloads: Sequence[str]) -> None:
        self._check(workloads)
        now = datetime.now(UTC).isoformat()  # microseconds: two restarts never look the same
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
        for workload in workloads:
            self._patch(workload, body, "restart")

    # -- secrets --------------------------------------------------------------------------

    def read_secret(self, name: str) -> dict[str, str]:
        with k8s_errors(f"read Secret {self.namespace}/{name}"):
            secret = self._core.read_namespaced_secret(
                name, self.namespace, _request_timeout=_TIMEOUT
            )
        values: dict[str, str] = {}
        for key, encoded in (secret.data or {}).items():
            raw = encoded if isinstance(encoded, bytes) else encoded.encode("ascii", "replace")
            try:
                values[key] = base64.b64decode(raw, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise PermanentError(
                    f"Secret {self.namespace}/{name}: key {key!r} is not base64-encoded UTF-8 text"
                ) from None
        return values

    def write_secret(self, name: str, values: Mapping[str, str]) -> None:
        data = {k: base64.b64encode(v.encode("utf-8")).decode("ascii") for k, v in values.items()}
        ns = self.namespace
        with k8s_errors(f"write Secret {ns}/{name}"):
            try:
                # a strategic-merge patch of the data map sets these keys and keeps the others
                self._core.patch_namespaced_secret(
                    name, ns, {"data": data}, _request_timeout=_TIMEOUT
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                secret = V1Secret(
                    api_version="v1",
                    kind="Secret",
                    metadata=V1ObjectMeta(name=name, namespace=ns),
                    type="Opaque",
                    data=dict(data),
                )
                self._core.create_namespaced_secret(ns, secret, _request_timeout=_TIMEOUT)

    # -- manifests ------------------------------------------------------------------------

    def _manifest(self, source: Path, doc: object) -> _Manifest:
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: a document is not a Kubernetes object")
        api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
        resource = _RESOURCES.get((api_version, kind))
        if resource is None:
            supported = ", ".join(sorted(f"{k} ({v})" for v, k in _RESOURCES))
            raise ConfigError(
                f"{source}: kind {kind or '?'} ({api_version or 'no apiVersion'}) is not "
                f"supported by apply_manifests; supported: {supported}"
            )
        meta = doc.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: a {kind} has no metadata.name")
        plural, namespaced = resource
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            ns = str(meta.get("namespace") or self.namespace)
            path = f"{prefix}/namespaces/{quote(ns, safe='')}/{plural}/{quote(name, safe='')}"
        else:
            path = f"{prefix}/{plural}/{quote(name, safe='')}"
        return _Manifest(source, f"{kind}/{name}", path, doc)

    def _load_manifests(self, directory: Path) -> list[_Manifest]:
        """Every object in the directory's manifest files, checked; Namespaces first."""
        if not directory.is_dir():
            raise ConfigError(f"manifest directory {directory} does not exist")
        files = sorted(p for p in directory.iterdir() if p.suffix in _MANIFEST_SUFFIXES)
        manifests: list[_Manifest] = []
        for source in files:
            try:
                docs = list(yaml.safe_load_all(source.read_text(encoding="utf-8")))
            except yaml.MarkedYAMLError as exc:
                line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
                # only the position and the problem: the offending line may hold a secret
                raise ConfigError(f"{source}: invalid YAML at line {line}: {exc.problem}") from None
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{source}: unreadable ({type(exc).__name__})") from None
            for doc in docs:
                if doc is None:  # an empty document between two "---"
                    continue
                items = (
                    doc.get("items")
                    if isinstance(doc, dict) and doc.get("kind") == "List"
                    else [doc]
                )
                manifests.extend(self._manifest(source, item) for item in items or [])
        if not manifests:
            raise ConfigError(f"no Kubernetes objects in {directory} (*.yaml, *.yml, *.json)")
        return sorted(manifests, key=lambda m: m.body["kind"] != "Namespace")

    def apply_manifests(self, directory: Path) -> list[str]:
        """Server-side apply of every object under ``directory`` (not recursive), taking over
        fields other managers own (``force``). Every file is read and checked before the
        first object is sent: a bad file changes nothing."""
        applied: list[str] = []
        for manifest in self._load_manifests(directory):
            with k8s_errors(f"apply {manifest.label} from {manifest.source.name}"):
                request = self._client.param_serialize(
                    method="PATCH",
                    resource_path=manifest.path,
                    query_params=[("fieldManager", self.field_manager), ("force", True)],
                    header_params={
                        "Content-Type": "application/apply-patch+yaml",
                        "Accept": "application/json",
                    },
                    body=manifest.body,  # sent as JSON, which is YAML
                    auth_settings=["BearerToken"],
                )
                response = self._client.call_api(*request, _request_timeout=_TIMEOUT)
                response.read()  # type: ignore[no-untyped-call]
                if not 200 <= response.status <= 299:
                    raise ApiException.from_response(
                        http_resp=response,
                        body=(response.data or b"").decode("utf-8", "replace"),
                        data=None,
                    )
            applied.append(manifest.label)
        return applied
