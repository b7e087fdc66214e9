"""The live cluster as the CLI sees it (``--cluster``): the current KUBECONFIG, read-only.

Synchronous on purpose: the CLI is a short process with nothing else to do. Each
(kind, namespace) is listed once per run.
"""

from __future__ import annotations

import os
from typing import Any

from controller import api


class LiveError(Exception):
    """The cluster cannot be read (the message says why, for the user)."""


class LiveCluster:
    def __init__(self) -> None:
        try:
            from kubernetes import client, config
        except ModuleNotFoundError as exc:  # the base install (a pull request's CI)
            raise LiveError("--cluster needs the Kubernetes client, which the 'operator' "
                            "extra installs: pip install 'trellis-mlops[operator]'") from exc

        try:
            # KUBECONFIG as it is now (the client reads it once, at its import).
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except (config.ConfigException, OSError) as exc:
            raise LiveError(f"--cluster: no usable kubeconfig ({exc})") from exc
        self._api = client.CustomObjectsApi()
        self._seen: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def objects(self, kind: api.Kind, namespace: str) -> dict[str, dict[str, Any]]:
        """name -> object for every ``kind`` in ``namespace``."""
        from kubernetes.client.exceptions import ApiException

        key = (kind.kind, namespace)
        if key not in self._seen:
            try:
                listed = self._api.list_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, kind.plural, _request_timeout=30)
            except ApiException as exc:
                raise LiveError(f"--cluster: listing {kind.plural} in {namespace} failed: "
                                f"{exc.status} {exc.reason}") from exc
            except OSError as exc:
                raise LiveError(f"--cluster: the cluster is unreachable ({exc})") from exc
            items = listed.get("items", [])
            for item in items:
                item.setdefault("kind", kind.kind)
                item.setdefault("apiVersion", api.API_VERSION)
            self._seen[key] = {o["metadata"]["name"]: o for o in items}
        return self._seen[key]

    def experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects(api.EXPERIMENT, namespace).get(name)
