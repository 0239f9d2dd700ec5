"""A small fake Kubernetes API server on 127.0.0.1, speaking real HTTP, for tests.

No kube-apiserver can run on our machines, and mocked clients prove nothing, so the code that
uses the official `kubernetes` client is tested against this server through that client. It
serves what `kdist submit/status/cancel` touch: RayJobs (ray.io/v1, with the /status
subresource and discovery), ConfigMaps and Pods (list and log), with the API server's
behaviour where it matters:

- 201 on create with uid, resourceVersion, generation, creationTimestamp; 409 AlreadyExists;
  422 Invalid when the KubeRay CRD schema rejects a RayJob (the CRDs are required: without
  them the server does not start, so no RayJob is ever accepted unchecked); status given on
  create is dropped, and only /status writes it.
- merge-patch on objects and on /status; DELETE; list with label and field selectors.
- watch (`?watch=true`) from a resourceVersion, or from now with synthetic ADDED events,
  streamed as chunked JSON lines until `timeoutSeconds`.
- pod logs: 400 while the pod is Pending (its container is waiting to start), `tailLines`,
  and `follow=true` streamed as chunks while the pod runs, ending when it terminates
  (`add_pod`, `append_log`, `set_pod_phase` play the kubelet).
- modes: `forbidden` (403 for every request, as RBAC would), `rules` (the rules of an RBAC
  Role: a request that no rule allows gets 403), `crd_installed=False` (404 on ray.io, as
  when KubeRay is not installed), and a bearer token that must be presented.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

from . import kuberay_schema

RAY_GROUP_VERSION = "ray.io/v1"


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    has_status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


RAYJOBS = Resource("ray.io", "v1", "rayjobs", "RayJob", has_status=True)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
PODS = Resource("", "v1", "pods", "Pod", has_status=True)
RESOURCES = {(r.group, r.plural): r for r in (RAYJOBS, CONFIGMAPS, PODS)}

_PATH = re.compile(
    r"^/(?:api/(?P<core_version>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?(?:/(?P<plural>[^/]+))?"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|log))?$"
)


class ApiFailure(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


@dataclass
class Event:
    resource_version: int
    kind: str  # ADDED, MODIFIED, DELETED
    key: tuple[Resource, str, str]
    obj: dict[str, Any]


@dataclass
class FakeKube:
    """Start with `with FakeKube(...) as kube:`; `kube.write_kubeconfig(path)` for clients."""

    # The KubeRay CRD folder RayJobs are validated against; None: the project's (required).
    crd_folder: str | Path | None = None
    crd_installed: bool = True
    forbidden: bool = False
    # Rules of the Role bound to the client (apiGroups/resources/verbs); None: allow all.
    rules: list[dict[str, Any]] | None = None
    token: str = "fake-token"
    user: str = "system:serviceaccount:default:kdist-submitter"
    # Server-side cap on one watch request, like the API server's --min-request-timeout.
    max_watch_seconds: float = 30.0
    # A log follow ends after this long even while the pod runs (as proxies cut idle streams).
    max_log_follow_seconds: float = 30.0
    objects: dict[tuple[Resource, str, str], dict[str, Any]] = field(default_factory=dict)
    pod_logs: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._events: list[Event] = []
        self._rv = 100
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeKube:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.crd_folder = Path(self.crd_folder or kuberay_schema.require_crd_dir())
        if not (self.crd_folder / kuberay_schema.RAYJOB_CRD).is_file():
            raise FileNotFoundError(kuberay_schema.missing_crds_message(self.crd_folder))
        handler = type("Handler", (_Handler,), {"kube": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # --- what tests use to play the operator -----------------------------------------------

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        with self._changed:
            found = self.objects.get((resource, namespace, name))
            return copy.deepcopy(found) if found else None

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patch(RAYJOBS, namespace, name, {"status": status}, subresource="status")

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        log: str = "",
        phase: str = "Running",
    ) -> None:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": "x"}]},
        }
        with self._changed:
            self.pod_logs[(namespace, name)] = log
            self.create(PODS, namespace, pod)
        self.set_pod_phase(namespace, name, phase)

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        """Pending, Running, Succeeded or Failed; a terminated pod's log follow ends."""
        self.patch(PODS, namespace, name, {"status": {"phase": phase}}, subresource="status")

    def append_log(self, namespace: str, name: str, text: str) -> None:
        with self._changed:
            self.pod_logs[(namespace, name)] += text
            self._changed.notify_all()

    def pod_log(self, namespace: str, name: str, tail: int | None, follow: bool):
        """Yield the log as the kubelet serves it: all (or the last `tail` lines), then, when
        following, what is appended until the pod terminates."""
        key = (PODS, namespace, name)
        with self._changed:
            pod = self._existing(key)
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if phase == "Pending":
                raise ApiFailure(
                    400,
                    "BadRequest",
                    f'container "main" in pod "{name}" is waiting to start: ContainerCreating',
                )
            text = self.pod_logs.get((namespace, name), "")
        sent = len(text)
        yield _tail(text, tail)
        deadline = time.monotonic() + self.max_log_follow_seconds
        while follow:
            with self._changed:
                text = self.pod_logs.get((namespace, name), "")
                pod = self.objects.get(key)
                running = pod is not None and pod.get("status", {}).get("phase") == "Running"
                left = deadline - time.monotonic()
                if len(text) == sent and running and left > 0 and not self._stopping:
                    self._changed.wait(left)
                    continue
            if len(text) > sent:
                yield text[sent:]
                sent = len(text)
            elif not running or left <= 0 or self._stopping:
                return

    # --- storage ---------------------------------------------------------------------------

    def _record(self, kind: str, key: tuple[Resource, str, str], obj: dict[str, Any]) -> None:
        self._events.append(Event(int(obj["metadata"]["resourceVersion"]), kind, key, obj))
        self._changed.notify_all()

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if body.get("kind") != resource.kind or body.get("apiVersion") != resource.api_version:
            raise ApiFailure(
                400,
                "BadRequest",
                f"the body is a {body.get('apiVersion')}/{body.get('kind')},"
                f" not a {resource.api_version}/{resource.kind}",
            )
        if not name:
            raise ApiFailure(
                422, "Invalid", f"{resource.kind} is invalid: metadata.name: Required value"
            )
        if meta.get("namespace", namespace) != namespace:
            raise ApiFailure(
                400, "BadRequest", "the namespace of the object does not match the request"
            )
        if resource is RAYJOBS and self.crd_folder:
            self._validate_rayjob(name, body)
        with self._changed:
            key = (resource, namespace, name)
            if key in self.objects:
                raise ApiFailure(
                    409,
                    "AlreadyExists",
                    f'{resource.qualified} "{name}" already exists',
                    {"name": name, "group": resource.group, "kind": resource.plural},
                )
            obj = copy.deepcopy(body)
            if resource.has_status:
                obj.pop("status", None)
            obj["metadata"] = {
                **meta,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_rv(),
                "generation": 1,
                "creationTimestamp": _now(),
            }
            self.objects[key] = obj
            self._record("ADDED", key, copy.deepcopy(obj))
            return copy.deepcopy(obj)

    def _validate_rayjob(self, name: str, body: dict[str, Any]) -> None:
        errors = kuberay_schema.schema_errors(body, str(self.crd_folder))
        if errors:
            raise ApiFailure(
                422,
                "Invalid",
                f'RayJob.ray.io "{name}" is invalid: {"; ".join(errors)}',
                {"name": name, "group": "ray.io", "kind": "RayJob"},
            )

    def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        with self._changed:
            key = (resource, namespace, name)
            current = self._existing(key)
            patched = _merge_patch(copy.deepcopy(current), patch)
            if subresource == "status":
                updated = {**current, "status": patched.get("status")}
            else:
                updated = patched
                updated["metadata"] = {
                    **patched.get("metadata", {}),
                    **{k: current["metadata"][k] for k in ("uid", "creationTimestamp", "name")},
                }
                if resource.has_status:  # the main resource ignores status writes
                    updated["status"] = current.get("status")
                    if updated["status"] is None:
                        updated.pop("status")
                if updated.get("spec") != current.get("spec"):
                    updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
            updated["metadata"]["resourceVersion"] = self._next_rv()
            self.objects[key] = updated
            self._record("MODIFIED", key, copy.deepcopy(updated))
            return copy.deepcopy(updated)

    def delete(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        with self._changed:
            key = (resource, namespace, name)
            obj = self._existing(key)
            del self.objects[key]
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._record("DELETED", key, copy.deepcopy(obj))
            return obj

    def _existing(self, key: tuple[Resource, str, str]) -> dict[str, Any]:
        resource, _, name = key
        if key not in self.objects:
            raise ApiFailure(
                404,
                "NotFound",
                f'{resource.qualified} "{name}" not found',
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        return copy.deepcopy(self.objects[key])

    def list(
        self, resource: Resource, namespace: str, selectors: dict[str, str]
    ) -> tuple[list[dict[str, Any]], str]:
        with self._changed:
            items = [
                copy.deepcopy(obj)
                for (res, ns, _), obj in self.objects.items()
                if res is resource and ns == namespace and _matches(obj, selectors)
            ]
            return items, str(self._rv)

    def watch_events(
        self,
        resource: Resource,
        namespace: str,
        selectors: dict[str, str],
        since: int | None,
        timeout: float,
    ):
        """Yield (type, object) for matching changes after `since` until the timeout."""
        deadline = time.monotonic() + min(timeout, self.max_watch_seconds)
        if since is None:
            current, now = self.list(resource, namespace, selectors)
            since = int(now)
            for obj in current:
                yield "ADDED", obj
        while True:
            with self._changed:
                pending = [
                    event
                    for event in self._events
                    if event.resource_version > since
                    and event.key[0] is resource
                    and event.key[1] == namespace
                    and _matches(event.obj, selectors)
                ]
                if not pending:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stopping:
                        return
                    self._changed.wait(left)
                    continue
            for event in pending:
                since = event.resource_version
                yield event.kind, event.obj


def _verb(method: str, match: re.Match, query: dict[str, list[str]]) -> str:
    """The RBAC verb of a request."""
    if method == "GET" and not match["name"]:
        watching = query.get("watch", ["false"])[0] in ("true", "1")
        return "watch" if watching else "list"
    return {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update"}.get(
        method, "delete"
    )


def _tail(text: str, lines: int | None) -> str:
    if lines is None:
        return text
    kept = text.splitlines(keepends=True)
    return "".join(kept[-lines:]) if lines > 0 else ""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what `kubectl patch --type merge` sends)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch(target.get(key), value)
    return target


def _selectors(query: dict[str, list[str]]) -> dict[str, str]:
    """labelSelector and fieldSelector (equality only) as {'label:k': v, 'field:path': v}."""
    found = {}
    for kind, param in (("label", "labelSelector"), ("field", "fieldSelector")):
        for text in query.get(param, []):
            for term in filter(None, text.split(",")):
                key, _, value = term.partition("=")
                found[f"{kind}:{key.strip()}"] = value.lstrip("=").strip()
    return found


def _matches(obj: dict[str, Any], selectors: dict[str, str]) -> bool:
    for key, want in selectors.items():
        kind, _, path = key.partition(":")
        if kind == "label":
            have = obj["metadata"].get("labels", {}).get(path)
        else:
            have: Any = obj
            for part in path.split("."):
                have = have.get(part) if isinstance(have, dict) else None
        if have != want:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        self.kube.requests.append((method, self.path))
        body = self._body()
        try:
            self._authorize()
            self._route(method, url.path, parse_qs(url.query), body)
        except ApiFailure as failure:
            self._send_json(failure.code, failure.status())

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _authorize(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.kube.token}":
            raise ApiFailure(401, "Unauthorized", "Unauthorized")

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> None:
        match = _PATH.match(path)
        if not match:
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        group = match["group"] or ""
        version = match["version"] or match["core_version"]
        if group == "ray.io" and not self.kube.crd_installed:
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        if self.kube.forbidden or not self._allowed(method, group, match, query):
            self._forbid(method, group, match, query)
        if match["plural"] is None and match["namespace"] is None:
            return self._discovery(group, version)
        resource = RESOURCES.get((group, match["plural"]))
        if resource is None or resource.version != version or match["namespace"] is None:
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        namespace, name, sub = match["namespace"], match["name"], match["sub"]
        self._dispatch(method, resource, namespace, name, sub, query, body)

    def _allowed(
        self, method: str, group: str, match: re.Match, query: dict[str, list[str]]
    ) -> bool:
        rules = self.kube.rules
        if rules is None or match["plural"] is None:  # discovery is open to every user
            return True
        verb = _verb(method, match, query)
        resource = match["plural"] + (f"/{match['sub']}" if match["sub"] else "")
        return any(
            group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and verb in rule.get("verbs", [])
            for rule in rules
        )

    def _forbid(
        self, method: str, group: str, match: re.Match, query: dict[str, list[str]]
    ) -> None:
        verb = _verb(method, match, query)
        plural = match["plural"] or ""
        where = f' in the namespace "{match["namespace"]}"' if match["namespace"] else ""
        raise ApiFailure(
            403,
            "Forbidden",
            f'{plural}{"." + group if group else ""} is forbidden: User "{self.kube.user}"'
            f' cannot {verb} resource "{plural}" in API group "{group}"{where}',
            {"group": group, "kind": plural},
        )

    def _discovery(self, group: str, version: str) -> None:
        resources = [
            {
                "name": r.plural,
                "singularName": r.kind.lower(),
                "namespaced": True,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }
            for r in RESOURCES.values()
            if r.group == group and r.version == version
        ]
        if not resources:
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        group_version = f"{group}/{version}" if group else version
        self._send_json(
            200, {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
        )

    def _dispatch(
        self,
        method: str,
        resource: Resource,
        namespace: str,
        name: str | None,
        sub: str | None,
        query: dict[str, list[str]],
        body: Any,
    ) -> None:
        kube = self.kube
        if name is None:
            if method == "POST":
                return self._send_json(201, kube.create(resource, namespace, body or {}))
            if method == "GET":
                if query.get("watch", ["false"])[0] in ("true", "1"):
                    return self._watch(resource, namespace, query)
                items, rv = kube.list(resource, namespace, _selectors(query))
                listing = {
                    "apiVersion": resource.api_version,
                    "kind": f"{resource.kind}List",
                    "metadata": {"resourceVersion": rv},
                    "items": items,
                }
                return self._send_json(200, listing)
        elif sub == "log" and resource is PODS and method == "GET":
            return self._log(namespace, name, query)
        elif sub is None or (sub == "status" and resource.has_status):
            if method == "GET":
                return self._send_json(200, kube._existing((resource, namespace, name)))
            if method == "DELETE" and sub is None:
                return self._send_json(200, kube.delete(resource, namespace, name))
            if method in ("PATCH", "PUT"):
                if not isinstance(body, dict):
                    raise ApiFailure(415, "UnsupportedMediaType", "only merge patches are served")
                if method == "PUT":  # a full replacement is a patch that sets everything
                    body = {key: value for key, value in body.items() if key != "metadata"}
                return self._send_json(200, kube.patch(resource, namespace, name, body, sub))
        raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported here")

    def _watch(self, resource: Resource, namespace: str, query: dict[str, list[str]]) -> None:
        since_text = query.get("resourceVersion", [""])[0]
        since = int(since_text) if since_text not in ("", "0") else None
        timeout = float(query.get("timeoutSeconds", [self.kube.max_watch_seconds])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for kind, obj in self.kube.watch_events(
                resource, namespace, _selectors(query), since, timeout
            ):
                self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):  # the client stopped watching
            pass

    def _log(self, namespace: str, name: str, query: dict[str, list[str]]) -> None:
        tail = int(query["tailLines"][0]) if "tailLines" in query else None
        follow = query.get("follow", ["false"])[0] in ("true", "1")
        parts = self.kube.pod_log(namespace, name, tail, follow)
        first = next(parts)  # raises the 400 of a waiting container before any header
        if not follow:
            return self._send_text(200, first)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for text in itertools.chain([first], parts):
                if text:
                    self._chunk(text.encode())
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):  # the client stopped following
            pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, code: int, payload: dict[str, Any]) -> None:
        self._send(code, json.dumps(payload).encode(), "application/json")

    def _send_text(self, code: int, text: str) -> None:
        self._send(code, text.encode(), "text/plain")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
