"""A small Kubernetes API server for tests, spoken to by the real ``kubernetes`` client over HTTP.

No API server can be installed here, so this emulates the part of one that the platform layer
uses, returning complete objects (the 37.x client validates every response with pydantic):

- Deployments and StatefulSets: GET (also ``/status``), PATCH (strategic-merge / merge patch,
  as JSON merge patch: maps merge, lists are replaced), POST, PUT, DELETE; the ``/scale``
  subresource (GET/PATCH/PUT; ``spec.replicas`` omitted when 0, like the real API).
  A controller moves one pod per ``lag_s`` seconds toward the spec: it adds a pod, removes one,
  or replaces a pod of an older template (a rollout); ``metadata.generation`` counts spec
  changes and ``status.observedGeneration`` catches up at the next step. Every existing pod is
  ready. ``readyReplicas`` & co are omitted when 0. ``freeze`` stops a workload's controller.
- Pods: GET list with an equality ``labelSelector``, derived from the controllers' pods.
- Secrets: GET/POST/PATCH/PUT/DELETE; ``data`` must be base64, ``stringData`` is folded into it.
- Namespaces: GET one or the list; objects are only created in existing namespaces.
- Pods' ``exec`` over WebSocket (channel protocol v4): the command runs on this machine, as if the
  container were it (tests put a local redis-server's files behind a pod this way).
- Server-side apply (PATCH ``application/apply-patch+yaml``) of any resource path: creates or
  merges (fields dropped from a manifest are not pruned), needs ``fieldManager``, records the
  manager in ``metadata.managedFields``; an apply that changes nothing keeps resourceVersion.
- Any other resource under ``/api/v1`` or ``/apis/<group>/<version>`` is stored as is.
- Errors are Status objects shaped like the real API's; requests need the kubeconfig's token.

``ClusterState.requests`` logs every request (method, path, query, content type) and
``fail_next`` makes the next requests fail with a chosen status (503, 403, ...).
``enforce_role`` makes it answer 403, like the real API's RBAC, to any request that the rules of
a Role (e.g. deployments/kubernetes/21-rbac-application.yaml) do not allow; ``denied`` lists them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import itertools
import json
import re
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

__all__ = [
    "ClusterState",
    "Emulator",
    "Request",
    "application_role",
    "k8s_emulator",
    "run_emulator",
]

NAMESPACE = "dr"
TOKEN = "emulator-token"
_PATH = re.compile(
    r"^(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>scale|status))?$"
)
_KINDS = {
    "namespaces": "Namespace",
    "pods": "Pod",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "services": "Service",
    "deployments": "Deployment",
    "statefulsets": "StatefulSet",
}
_WORKLOADS = {"deployments": "Deployment", "statefulsets": "StatefulSet"}
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(live: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386): maps merge recursively, null deletes, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            live.pop(key, None)
        elif isinstance(value, dict):
            target = live.get(key)
            live[key] = target if isinstance(target, dict) else {}
            _merge(live[key], value)
        else:
            live[key] = copy.deepcopy(value)


def _revision(obj: dict[str, Any]) -> str:
    """The template hash: pods made from another template belong to an older revision."""
    template = json.dumps(obj["spec"]["template"], sort_keys=True).encode()
    return hashlib.sha256(template).hexdigest()[:10]


class ApiError(Exception):
    """An error answer of the emulated API, turned into a Status object."""

    def __init__(self, code: int, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or _REASONS.get(code, "Unknown")

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


@dataclass(frozen=True)
class Request:
    """One request as the emulator received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any = None  # the decoded JSON/YAML body of a write, None for reads


@dataclass
class _Controller:
    """The Deployment/StatefulSet controller's view of one workload: its pods, oldest first."""

    pods: list[tuple[str, str]]  # (pod name, template revision)
    observed_generation: int
    revision: str  # the template revision as of observed_generation: status counts use it
    last_step: float
    frozen: bool = False
    serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@dataclass
class _Failure:
    remaining: int
    code: int
    message: str
    match: str | None


class ClusterState:
    """Everything the emulated cluster holds; thread-safe (one lock around every request)."""

    def __init__(self, lag_s: float = 0.0) -> None:
        self.lag_s = lag_s  # seconds per controller step; 0 converges at the next request
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, Any]] = {}  # REST path of an object -> the object
        self.controllers: dict[str, _Controller] = {}  # REST path of a workload -> controller
        self.requests: list[Request] = []
        self.role: list[dict[str, Any]] | None = None  # RBAC rules; None allows everything
        self.denied: list[str] = []  # "verb resource (group)" of every request RBAC refused
        self._failures: list[_Failure] = []
        self._versions = itertools.count(1)
        self.create_namespace(NAMESPACE)

    # -- helpers for tests ------------------------------------------------------------------

    def enforce_role(self, rules: list[dict[str, Any]]) -> None:
        """Allow only what these Role rules allow (``apiGroups``/``resources``/``verbs``)."""
        with self.lock:
            self.role = rules

    def _authorize(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        m = _PATH.match(path)
        if self.role is None or m is None:
            return
        prefix, ns, plural, name, sub = m.group("prefix", "ns", "plural", "name", "sub")
        group = prefix.split("/")[2] if prefix.startswith("/apis/") else ""
        resource = f"{plural}/{sub}" if sub else plural
        collection = {
            "GET": "watch" if query.get("watch") else "list",
            "DELETE": "deletecollection",
        }
        single = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        verb = "create" if method == "POST" else (single if name else collection).get(method, "?")
        for rule in self.role:
            if (
                {group, "*"} & set(rule.get("apiGroups", []))
                and {resource, "*"} & set(rule.get("resources", []))
                and {verb, "*"} & set(rule.get("verbs", []))
                and (not rule.get("resourceNames") or name in rule["resourceNames"])
            ):
                return
        self.denied.append(f"{verb} {resource} ({group or 'core'})")
        where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
        raise ApiError(
            403,
            f"{plural} {f'{name!r} ' if name else ''}is forbidden: User "
            f'"system:serviceaccount:dr-pipelines:dr-pipelines" cannot {verb} resource '
            f'"{resource}" in API group "{group}"{where}',
        )

    @staticmethod
    def path(kind: str, name: str, namespace: str | None = NAMESPACE) -> str:
        """The REST path of an object of a core or apps kind."""
        plural = {v: k for k, v in _KINDS.items()}[kind]
        prefix = "/apis/apps/v1" if plural in _WORKLOADS else "/api/v1"
        if kind == "Namespace":
            return f"{prefix}/namespaces/{name}"
        return f"{prefix}/namespaces/{namespace}/{plural}/{name}"

    def create_namespace(self, name: str) -> None:
        with self.lock:
            self._store(
                self.path("Namespace", name),
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )

    def seed_workload(
        self,
        name: str,
        *,
        kind: str = "Deployment",
        replicas: int = 1,
        ready: int | None = None,
        frozen: bool = False,
        namespace: str = NAMESPACE,
    ) -> None:
        """A Deployment/StatefulSet with ``replicas`` wanted and ``ready`` pods (default: all)."""
        labels = {"app": name}
        spec: dict[str, Any] = {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": f"example/{name}:1"}]},
            },
        }
        if kind == "StatefulSet":
            spec["serviceName"] = name
        obj = {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec,
        }
        with self.lock:
            path = self.path(kind, name, namespace)
            self._store(path, obj)
            ctl = self.controllers[path]
            rev = _revision(obj)
            ctl.pods = [
                (f"{name}-{rev[:5]}-{next(ctl.serial)}", rev)
                for _ in range(replicas if ready is None else ready)
            ]
            ctl.observed_generation, ctl.revision = obj["metadata"]["generation"], rev
            ctl.frozen = frozen

    def freeze(self, name: str, kind: str = "Deployment", *, frozen: bool = True) -> None:
        """Stop (or restart) the controller of a workload: its pods stay as they are."""
        with self.lock:
            ctl = self.controllers[self.path(kind, name)]
            ctl.frozen, ctl.last_step = frozen, time.monotonic()

    def workload(self, name: str, kind: str = "Deployment") -> dict[str, Any]:
        """The workload as the API would return it now (with its status)."""
        with self.lock:
            path = self.path(kind, name)
            self._advance()
            return self._render(path)

    def secret_values(self, name: str) -> dict[str, str]:
        """A Secret's data, decoded."""
        with self.lock:
            data = self.objects[self.path("Secret", name)].get("data", {})
            return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def fail_next(
        self,
        count: int = 1,
        code: int = 503,
        message: str = "injected failure",
        *,
        match: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose ``"METHOD path"`` contains ``match`` (all
        requests when None) with a Status error of ``code``."""
        with self.lock:
            self._failures.append(_Failure(count, code, message, match))

    # -- storage ----------------------------------------------------------------------------

    def _store(self, path: str, obj: dict[str, Any]) -> None:
        """Create or replace the object at ``path``, keeping the server's metadata; a write
        that changes nothing keeps the resourceVersion."""
        old = self.objects.get(path)
        obj.pop("status", None)  # the server's to set
        meta = obj.setdefault("metadata", {})
        if obj.get("kind") in _WORKLOADS.values():
            obj["spec"].setdefault("replicas", 1)
        if old is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        else:
            for key in ("uid", "creationTimestamp", "generation"):
                meta[key] = old["metadata"][key]
            if "managedFields" in old["metadata"]:
                meta.setdefault("managedFields", old["metadata"]["managedFields"])
            if obj.get("spec") != old.get("spec"):
                meta["generation"] += 1
            if self._content(obj) == self._content(old):
                return
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[path] = obj
        if old is None and obj.get("kind") in _WORKLOADS.values():
            self.controllers[path] = _Controller([], 0, "", time.monotonic())

    @staticmethod
    def _content(obj: dict[str, Any]) -> dict[str, Any]:
        """What a write can change, apart from bookkeeping (resourceVersion, apply times)."""
        meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
        meta["managedFields"] = [
            (e["manager"], e["operation"]) for e in meta.get("managedFields", [])
        ]
        return {**obj, "metadata": meta}

    def _delete(self, path: str) -> None:
        del self.objects[path]
        self.controllers.pop(path, None)

    # -- the controllers --------------------------------------------------------------------

    def _step(self, path: str, ctl: _Controller) -> bool:
        """One controller step; False when the workload already matches its spec."""
        obj = self.objects[path]
        want, rev = obj["spec"]["replicas"], _revision(obj)
        name = obj["metadata"]["name"]
        caught_up = ctl.observed_generation == obj["metadata"]["generation"]
        ctl.observed_generation, ctl.revision = obj["metadata"]["generation"], rev
        old = [p for p in ctl.pods if p[1] != rev]
        if len(ctl.pods) < want:
            ctl.pods.append((f"{name}-{rev[:5]}-{next(ctl.serial)}", rev))
        elif len(ctl.pods) > want:
            ctl.pods.remove(old[0] if old else ctl.pods[-1])
        elif old:
            ctl.pods.remove(old[0])
            ctl.pods.append((f"{name}-{rev[:5]}-{next(ctl.serial)}", rev))
        else:
            return not caught_up
        return True

    def _advance(self) -> None:
        now = time.monotonic()
        for path, ctl in self.controllers.items():
            if ctl.frozen:
                continue
            if self.lag_s <= 0:
                while self._step(path, ctl):
                    pass
                ctl.last_step = now
                continue
            while now - ctl.last_step >= self.lag_s:
                if not self._step(path, ctl):
                    ctl.last_step = now
                    break
                ctl.last_step += self.lag_s

    # -- rendering --------------------------------------------------------------------------

    def _render(self, path: str) -> dict[str, Any]:
        obj = copy.deepcopy(self.objects[path])
        kind = obj.get("kind")
        if kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        elif kind == "Secret":
            obj.setdefault("type", "Opaque")
        elif kind in _WORKLOADS.values():
            obj["status"] = self._workload_status(path, obj)
        return obj

    def _workload_status(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        # until the controller observes a new spec, its counts describe the previous one
        ctl, rev = self.controllers[path], self.controllers[path].revision
        pods = len(ctl.pods)
        updated = sum(1 for _, r in ctl.pods if r == rev)
        counts = {
            "replicas": pods,
            "updatedReplicas": updated,
            "readyReplicas": pods,
            "availableReplicas": pods,
        }
        if obj["kind"] == "StatefulSet":
            counts["currentReplicas"] = updated
        # like the real API: counts that are 0 are omitted (StatefulSet keeps "replicas")
        status: dict[str, Any] = {k: v for k, v in counts.items() if v}
        status["observedGeneration"] = ctl.observed_generation
        if obj["kind"] == "StatefulSet":
            name = obj["metadata"]["name"]
            status.update(
                replicas=pods, currentRevision=f"{name}-{rev}", updateRevision=f"{name}-{rev}"
            )
        return status

    def _pods(self, namespace: str) -> list[dict[str, Any]]:
        pods = []
        for path, ctl in self.controllers.items():
            obj = self.objects[path]
            if obj["metadata"]["namespace"] != namespace:
                continue
            template = obj["spec"]["template"]
            for pod_name, rev in ctl.pods:
                labels = {
                    **template.get("metadata", {}).get("labels", {}),
                    "pod-template-hash": rev,
                }
                pods.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": pod_name,
                            "namespace": namespace,
                            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, pod_name)),
                            "labels": labels,
                            "creationTimestamp": obj["metadata"]["creationTimestamp"],
                        },
                        "spec": copy.deepcopy(template["spec"]),
                        "status": {
                            "phase": "Running",
                            "conditions": [{"type": "Ready", "status": "True"}],
                        },
                    }
                )
        return pods

    def _scale(self, path: str) -> dict[str, Any]:
        obj = self.objects[path]
        meta = obj["metadata"]
        replicas = obj["spec"]["replicas"]
        selector = ",".join(
            f"{k}={v}" for k, v in sorted(obj["spec"]["selector"].get("matchLabels", {}).items())
        )
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": replicas} if replicas else {},  # omitted when 0, like the API
            "status": {"replicas": len(self.controllers[path].pods), "selector": selector},
        }

    # -- the API ----------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        target: str,
        content_type: str | None,
        raw: bytes,
        authorization: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request: (HTTP status, JSON body)."""
        url = urlsplit(target)
        query = parse_qs(url.query)
        with self.lock:
            try:
                body = self._body(raw, content_type) if raw else None
            except ApiError:
                body = None
            request = Request(method, url.path, query, content_type, body)
            self.requests.append(request)
            try:
                if authorization != f"Bearer {TOKEN}":
                    raise ApiError(401, "Unauthorized")
                self._authorize(method, url.path, query)
                for failure in self._failures:
                    if failure.remaining > 0 and (
                        failure.match is None or failure.match in f"{method} {url.path}"
                    ):
                        failure.remaining -= 1
                        raise ApiError(failure.code, failure.message)
                self._advance()
                return self._dispatch(method, url.path, query, content_type, raw)
            except ApiError as exc:
                return exc.code, exc.status()

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        content_type: str | None,
        raw: bytes,
    ) -> tuple[int, dict[str, Any]]:
        m = _PATH.match(path)
        if m is None:
            raise ApiError(404, f"the server could not find the requested resource ({path})")
        prefix, ns, plural, name, sub = m.group("prefix", "ns", "plural", "name", "sub")
        name = unquote(name) if name else None
        group = prefix.split("/")[2] if prefix.startswith("/apis/") else ""
        resource = f"{plural}.{group}" if group else plural
        if name is None:
            return self._collection(method, prefix, ns, plural, query, raw)
        obj_path = (
            f"{prefix}/namespaces/{ns}/{plural}/{name}" if ns else f"{prefix}/{plural}/{name}"
        )
        exists = obj_path in self.objects
        if sub == "scale":
            if plural not in _WORKLOADS:
                raise ApiError(404, f"the server could not find the requested resource ({path})")
            if not exists:
                raise ApiError(404, f'{resource} "{name}" not found')
            return self._scale_request(method, obj_path, content_type, raw)
        if method == "GET":
            if not exists:
                raise ApiError(404, f'{resource} "{name}" not found')
            return 200, self._render(obj_path)
        if method == "DELETE":
            if not exists:
                raise ApiError(404, f'{resource} "{name}" not found')
            self._delete(obj_path)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": plural},
            }
        body = self._body(raw, content_type)
        self._check_identity(body, ns, name)
        if method == "PUT":
            if not exists:
                raise ApiError(404, f'{resource} "{name}" not found')
            self._store(obj_path, self._validated(plural, body, ns))
            return 200, self._render(obj_path)
        if method != "PATCH":
            raise ApiError(405, f"{method} is not supported on {path}")
        if content_type == "application/apply-patch+yaml":
            manager = (query.get("fieldManager") or [""])[0]
            if not manager:
                raise ApiError(
                    422,
                    'PatchOptions.meta.k8s.io "" is invalid: '
                    "fieldManager: Required value: is required for apply patch",
                )
            if not exists:
                self._check_namespace(ns)
                live: dict[str, Any] = {}
            else:
                live = copy.deepcopy(self.objects[obj_path])
            _merge(live, body)
            self._record_manager(live, manager)
            self._store(obj_path, self._validated(plural, live, ns))
            return (200 if exists else 201), self._render(obj_path)
        if content_type not in (
            "application/strategic-merge-patch+json",
            "application/merge-patch+json",
        ):
            raise ApiError(
                415,
                f"the body of the request was in an unknown format ({content_type}) - accepted "
                "media types include: application/json-patch+json, application/merge-patch+json, "
                "application/apply-patch+yaml, application/strategic-merge-patch+json",
            )
        if not exists:
            raise ApiError(404, f'{resource} "{name}" not found')
        live = copy.deepcopy(self.objects[obj_path])
        _merge(live, body)
        self._store(obj_path, self._validated(plural, live, ns))
        return 200, self._render(obj_path)

    def _collection(
        self,
        method: str,
        prefix: str,
        ns: str | None,
        plural: str,
        query: dict[str, list[str]],
        raw: bytes,
    ) -> tuple[int, dict[str, Any]]:
        if method == "GET":
            if plural == "pods":
                items = [
                    p
                    for p in self._pods(ns or "")
                    if _selects(query.get("labelSelector", [""])[0], p)
                ]
            else:
                base = f"{prefix}/namespaces/{ns}/{plural}/" if ns else f"{prefix}/{plural}/"
                items = [
                    self._render(p)
                    for p in sorted(self.objects)
                    if p.startswith(base) and "/" not in p[len(base) :]
                ]
            kind = _KINDS.get(plural, "Object")
            return 200, {
                "kind": f"{kind}List",
                "apiVersion": prefix.removeprefix("/apis/").removeprefix("/api/"),
                "metadata": {"resourceVersion": str(next(self._versions))},
                "items": items,
            }
        if method != "POST":
            raise ApiError(405, f"{method} is not supported on a collection")
        body = self._body(raw, "application/json")
        name = body.get("metadata", {}).get("name")
        if not name:
            raise ApiError(
                422,
                f"{_KINDS.get(plural, plural)} is invalid: "
                "metadata.name: Required value: name is required",
            )
        self._check_identity(body, ns, name)
        path = f"{prefix}/namespaces/{ns}/{plural}/{name}" if ns else f"{prefix}/{plural}/{name}"
        if path in self.objects:
            group = prefix.split("/")[2] if prefix.startswith("/apis/") else ""
            raise ApiError(409, f'{plural}{"." + group if group else ""} "{name}" already exists')
        self._check_namespace(ns)
        self._store(path, self._validated(plural, body, ns))
        return 201, self._render(path)

    def _scale_request(
        self, method: str, path: str, content_type: str | None, raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        if method == "GET":
            return 200, self._scale(path)
        if method not in ("PATCH", "PUT"):
            raise ApiError(405, f"{method} is not supported on a scale subresource")
        scale = self._scale(path)
        body = self._body(raw, content_type)
        if method == "PUT":
            scale["spec"] = body.get("spec") or {}
        else:
            _merge(scale, body)
        replicas = scale["spec"].get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ApiError(
                422,
                f'Scale.autoscaling "{scale["metadata"]["name"]}" is invalid: spec.replicas: '
                f"Invalid value: {replicas!r}: must be greater than or equal to 0",
            )
        live = copy.deepcopy(self.objects[path])
        live["spec"]["replicas"] = replicas
        self._store(path, live)
        return 200, self._scale(path)

    # -- request checks ---------------------------------------------------------------------

    @staticmethod
    def _body(raw: bytes, content_type: str | None) -> dict[str, Any]:
        try:
            body = (
                yaml.safe_load(raw)
                if content_type == "application/apply-patch+yaml"
                else json.loads(raw)
            )
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, f"the request body is not valid: {type(exc).__name__}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the request body is not an object")
        return body

    @staticmethod
    def _check_identity(body: dict[str, Any], ns: str | None, name: str) -> None:
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise ApiError(400, "the name of the object does not match the name on the URL")
        if ns is not None and meta.get("namespace") not in (None, ns):
            raise ApiError(
                400,
                "the namespace of the provided object does not match "
                "the namespace sent on the request",
            )

    def _check_namespace(self, ns: str | None) -> None:
        if ns is not None and self.path("Namespace", ns) not in self.objects:
            raise ApiError(404, f'namespaces "{ns}" not found')

    @staticmethod
    def _validated(plural: str, obj: dict[str, Any], ns: str | None) -> dict[str, Any]:
        """What the real API server refuses, it refuses here too (as far as the tests need)."""
        meta = obj.setdefault("metadata", {})
        if ns is not None:
            meta["namespace"] = ns
        kind = _KINDS.get(plural, obj.get("kind"))
        obj.setdefault("kind", kind)
        if plural in _WORKLOADS:
            spec = obj.get("spec") or {}
            containers = (spec.get("template") or {}).get("spec", {}).get("containers")
            if not spec.get("selector") or not containers:
                raise ApiError(
                    422,
                    f'{kind}.apps "{meta.get("name")}" is invalid: '
                    "spec.selector, spec.template.spec.containers: Required value",
                )
        if plural == "secrets":
            data = obj.setdefault("data", {})
            for key, value in (obj.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            for key, value in data.items():
                if not _SECRET_KEY.match(key):
                    raise ApiError(
                        422,
                        f'Secret "{meta.get("name")}" is invalid: data[{key}]: Invalid value: '
                        f'"{key}": a valid config key must consist of alphanumeric characters, '
                        "'-', '_' or '.'",
                    )
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError, ValueError) as exc:
                    raise ApiError(
                        400,
                        'Secret in version "v1" cannot be handled as a Secret: '
                        f"illegal base64 data for key {key}",
                    ) from exc
            obj.setdefault("type", "Opaque")
        return obj

    @staticmethod
    def _record_manager(obj: dict[str, Any], manager: str) -> None:
        """One Apply entry per manager in managedFields (field sets are not tracked)."""
        entries = [
            e
            for e in obj["metadata"].get("managedFields") or []
            if (e.get("manager"), e.get("operation")) != (manager, "Apply")
        ]
        entries.append(
            {
                "manager": manager,
                "operation": "Apply",
                "apiVersion": obj.get("apiVersion", ""),
                "time": _now(),
                "fieldsType": "FieldsV1",
                "fieldsV1": {},
            }
        )
        obj["metadata"]["managedFields"] = entries


def _selects(selector: str, pod: dict[str, Any]) -> bool:
    """Equality-based label selectors (``a=b,c!=d``), the form a Scale's status gives."""
    labels = pod["metadata"].get("labels", {})
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w.-]*)", term)
        if m is None:
            raise ApiError(400, f"unable to parse requirement: {term}")
        key, op, value = m.groups()
        if (labels.get(key) == value) != (op != "!="):
            return False
    return True


_EXEC = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/exec$")


def _read_frame(rfile: Any) -> tuple[int, bytes] | None:
    """One WebSocket frame from a client (masked, as clients must send them)."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b""
    data = rfile.read(n)
    if mask:
        key = (mask * (n // 4 + 1))[:n]
        data = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return opcode, data


def _frame(opcode: int, data: bytes) -> bytes:
    """One unmasked server frame."""
    n = len(data)
    if n < 126:
        size = bytes([n])
    elif n < 1 << 16:
        size = bytes([126]) + struct.pack(">H", n)
    else:
        size = bytes([127]) + struct.pack(">Q", n)
    return bytes([0x80 | opcode]) + size + data


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real API server
    disable_nagle_algorithm = True  # else each response waits ~40 ms for a delayed ACK
    server: _Server

    def _answer(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._exec()
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        code, body = self.server.state.handle(
            self.command,
            self.path,
            self.headers.get("Content-Type"),
            raw,
            self.headers.get("Authorization"),
        )
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def _exec(self) -> None:
        """``pods/<name>/exec`` over WebSocket (channel protocol v4, what ``kubectl exec`` and
        the client's ``stream`` speak). The pod's container is this machine: the command runs
        here, stdin frames (channel 0) are piped to it, its stdout/stderr come back on channels
        1/2 and its exit status on channel 3, then the socket closes."""
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        m = _EXEC.match(url.path)
        state = self.server.state
        with state.lock:
            state.requests.append(Request("GET", url.path, query, None))
            ok = (
                m is not None
                and self.headers.get("Authorization") == f"Bearer {TOKEN}"
                and m.group("pod") in {p["metadata"]["name"] for p in state._pods(m.group("ns"))}
                and bool(query.get("command"))
            )
        if not ok:
            self.send_error(404)
            return
        key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        accept = hashlib.sha1(key.encode(), usedforsecurity=False).digest()  # the RFC's choice
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(accept).decode())
        v4 = "v4.channel.k8s.io"
        self.send_header("Sec-WebSocket-Protocol", v4 if v4 in offered else offered[0])
        self.end_headers()
        proc = subprocess.Popen(
            query["command"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        assert stdin is not None
        assert stdout is not None
        assert stderr is not None

        def pump() -> None:  # client frames -> stdin, until a close frame or the end
            try:
                while (frame := _read_frame(self.rfile)) is not None:
                    opcode, data = frame
                    if opcode == 0x8:
                        break
                    if opcode in (0x1, 0x2) and data[:1] == b"\x00":
                        stdin.write(data[1:])
                        stdin.flush()
            except (OSError, ValueError):
                pass
            finally:
                with contextlib.suppress(OSError):
                    stdin.close()

        threading.Thread(target=pump, daemon=True).start()
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
        reader.start()
        out = stdout.read()
        code = proc.wait()
        reader.join()
        stdout.close()
        stderr.close()
        status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        if code != 0:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        for channel, data in ((1, out), (2, b"".join(errors)), (3, json.dumps(status).encode())):
            if data:
                self.wfile.write(_frame(0x2, bytes([channel]) + data))
        self.wfile.write(_frame(0x8, b""))
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is ClusterState.requests


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ClusterState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@dataclass
class Emulator:
    """A running emulator: point the client at ``kubeconfig``; inspect and steer ``state``."""

    url: str
    kubeconfig: Path
    state: ClusterState
    namespace: str = NAMESPACE

    def seed_deployment(self, name: str, replicas: int = 1, **kwargs: Any) -> None:
        self.state.seed_workload(name, kind="Deployment", replicas=replicas, **kwargs)

    def seed_statefulset(self, name: str, replicas: int = 1, **kwargs: Any) -> None:
        self.state.seed_workload(name, kind="StatefulSet", replicas=replicas, **kwargs)


ROLE_FILE = Path(__file__).parent.parent / "deployments/kubernetes/21-rbac-application.yaml"


def application_role() -> list[dict[str, Any]]:
    """The rules of the Role the scenario flows run under (docs/security.md)."""
    for doc in yaml.safe_load_all(ROLE_FILE.read_text()):
        if doc and doc.get("kind") == "Role":
            return list(doc["rules"])
    raise AssertionError(f"no Role in {ROLE_FILE}")


@contextmanager
def run_emulator(directory: Path, lag_s: float = 0.0) -> Iterator[Emulator]:
    """Serve a fresh emulated cluster on a free port; write its kubeconfig into ``directory``."""
    state = ClusterState(lag_s)
    server = _Server(state)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "emulator", "user": {"token": TOKEN}}],
                "contexts": [
                    {
                        "name": "emulator",
                        "context": {
                            "cluster": "emulator",
                            "user": "emulator",
                            "namespace": NAMESPACE,
                        },
                    }
                ],
                "current-context": "emulator",
            }
        )
    )
    try:
        yield Emulator(url, kubeconfig, state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def k8s_emulator(tmp_path: Path) -> Iterator[Emulator]:
    """An emulated Kubernetes API with namespace ``dr``; seed workloads with its helpers."""
    with run_emulator(tmp_path) as emulator:
        yield emulator
