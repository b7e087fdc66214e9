"""The operator's Kubernetes API adapter: a few typed async calls, nothing else.

The official client is synchronous, so every call runs in a worker thread
(``asyncio.to_thread``); handlers never block the event loop. Resources are a fixed
table (our kinds and the few built-ins we touch), which keeps RBAC and paths obvious.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from controller import api, conditions

__all__ = ["ApiException", "Kube", "Resource", "api_message", "resource_for"]


def api_message(exc: ApiException) -> str:
    """The API server's own sentence (``Status.message``: which verb on which resource was
    refused, which field is invalid), else the HTTP status and reason."""
    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (TypeError, ValueError):
        pass
    return f"{exc.status} {exc.reason}"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None,
             sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


EXPERIMENTS = Resource(api.GROUP, api.VERSION, "Experiment", "experiments")
MODEL_DEPLOYMENTS = Resource(api.GROUP, api.VERSION, "ModelDeployment", "modeldeployments")
SPEC_REPOSITORIES = Resource(api.GROUP, api.VERSION, "SpecRepository", "specrepositories")
JOBS = Resource("batch", "v1", "Job", "jobs")
PODS = Resource("", "v1", "Pod", "pods")
SECRETS = Resource("", "v1", "Secret", "secrets")
CONFIGMAPS = Resource("", "v1", "ConfigMap", "configmaps")
NAMESPACES = Resource("", "v1", "Namespace", "namespaces", namespaced=False)
EVENTS = Resource("", "v1", "Event", "events")
SELDON_DEPLOYMENTS = Resource("machinelearning.seldon.io", "v1", "SeldonDeployment",
                              "seldondeployments")

USER_AGENT = "trellis-operator"
_OBJECT_RESPONSES = {200: "object", 201: "object", 202: "object"}

_TABLE = {(r.api_version, r.kind): r for r in (
    EXPERIMENTS, MODEL_DEPLOYMENTS, SPEC_REPOSITORIES, JOBS, PODS, SECRETS, CONFIGMAPS,
    NAMESPACES, EVENTS, SELDON_DEPLOYMENTS,
)}


def resource_for(api_version: str, kind: str) -> Resource:
    try:
        return _TABLE[(api_version, kind)]
    except KeyError:
        raise ValueError(f"{kind} ({api_version}) is not a kind Trellis manages") from None


def for_kind(kind: api.Kind) -> Resource:
    return resource_for(api.API_VERSION, kind.kind)


def verb_and_resource(method: str, path: str) -> tuple[str, str]:
    """A request as Kubernetes' authorizer names it: (verb, resource[/subresource])."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]  # after /api/v1, /apis/g/v
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        rest = rest[2:]  # a namespaced path (two parts alone: a Namespace itself)
    resource = rest[0] if rest else ""
    if len(rest) >= 3:
        resource += "/" + rest[2]
    named = len(rest) >= 2
    verb = {"GET": "get" if named else "list", "POST": "create", "PUT": "update",
            "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())
    return verb, resource


# (connect, read) seconds for one API request. The client's default is no timeout: a
# connection the server or the network dropped without a word would hold a worker thread,
# and the reconcile loop awaiting it, for good. The API server ends its own requests at
# 60 s (--request-timeout); a timed-out call is a transient failure, retried.
REQUEST_TIMEOUT = (10.0, 75.0)


class Kube:
    """Async facade; one instance per process (it holds the connection pool).

    ``on_request(verb, resource)`` is told of every request made (the operator counts
    them on its /metrics: what an idle operator asks the API server is visible)."""

    def __init__(self, api_client: k8s.ApiClient,
                 on_request: Callable[[str, str], None] | None = None) -> None:
        self.api_client = api_client
        self.on_request = on_request

    @classmethod
    def from_env(cls, kubeconfig: str | None = None,
                 on_request: Callable[[str, str], None] | None = None) -> Kube:
        cfg = k8s.Configuration()
        try:
            # The client fixes its default path at import; read KUBECONFIG now instead.
            k8s_config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"),
                                        client_configuration=cfg)
        except k8s_config.ConfigException:
            k8s_config.load_incluster_config(client_configuration=cfg)
        client = k8s.ApiClient(cfg)
        client.user_agent = USER_AGENT  # the field manager name of our status writes
        return cls(client, on_request)

    async def close(self) -> None:
        await asyncio.to_thread(self.api_client.close)

    # ------------------------------------------------------------------ raw
    def _call(self, method: str, path: str, body: Any = None, query: list | None = None,
              content_type: str | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return self.api_client.call_api(
            path, method, query_params=query or [], header_params=headers, body=body,
            response_types_map=_OBJECT_RESPONSES, auth_settings=["BearerToken"],
            _return_http_data_only=True, _preload_content=True,
            _request_timeout=REQUEST_TIMEOUT,
        )

    async def request(self, method: str, path: str, body: Any = None, query: list | None = None,
                      content_type: str | None = None) -> Any:
        if self.on_request is not None:
            self.on_request(*verb_and_resource(method, path))
        try:
            return await asyncio.to_thread(self._call, method, path, body, query, content_type)
        except ApiException as exc:
            # The client's exception names no request; a user reading "404 Not Found" on
            # status needs to know which (a SeldonDeployment CRD not installed, say).
            exc.request = f"{method} {path}"
            raise

    # -------------------------------------------------------------- objects
    async def get(self, res: Resource, namespace: str | None, name: str) -> dict | None:
        try:
            return await self.request("GET", res.path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, res: Resource, namespace: str | None = None,
                   label_selector: str | None = None,
                   field_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        if field_selector:
            query.append(("fieldSelector", field_selector))
        result = await self.request("GET", res.path(namespace), query=query)
        return list(result.get("items", []))

    async def apply(self, obj: dict, *, field_manager: str = api.FIELD_MANAGER,
                    force: bool = True, dry_run: bool = False) -> dict:
        """Server-side apply (the object's ``apiVersion``/``kind`` pick the resource)."""
        res = resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        query = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        return await self.request("PATCH", res.path(meta.get("namespace"), meta["name"]), obj,
                                  query, "application/apply-patch+yaml")

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: dict,
                    *, sub: str | None = None) -> dict:
        return await self.request("PATCH", res.path(namespace, name, sub), patch,
                                  content_type="application/merge-patch+json")

    async def patch_status(self, res: Resource, namespace: str, name: str, patch: dict) -> dict:
        return await self.patch(res, namespace, name, {"status": patch}, sub="status")

    async def create(self, res: Resource, namespace: str | None, obj: dict) -> dict:
        return await self.request("POST", res.path(namespace), obj)

    async def delete(self, res: Resource, namespace: str | None, name: str) -> bool:
        try:
            await self.request("DELETE", res.path(namespace, name),
                               body={"propagationPolicy": "Background"})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        secret = await self.get(SECRETS, namespace, name)
        if secret is None:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    async def event(self, involved: dict, *, type_: str, reason: str, message: str,
                    component: str = "trellis-operator") -> None:
        """A core/v1 Event about ``involved`` (used where kopf's posting is not at hand)."""
        meta = involved["metadata"]
        now = conditions.now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"], "kind": involved["kind"],
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid"),
            },
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": component, "reportingInstance": component,
        }
        await self.create(EVENTS, meta["namespace"], body)


def owner_reference(owner: dict, *, controller: bool = True) -> dict:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
        "uid": meta["uid"], "controller": controller, "blockOwnerDeletion": True,
    }
