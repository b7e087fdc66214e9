"""What the demo watches while it runs: statuses every ~2 s, and the Events.

The report is drawn from this recording (``controller.demo.report``), so the canary
timeline and the drift p-values over time come from what the API server said at the
time, not from a reconstruction afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from controller import api


class Recorder(threading.Thread):
    def __init__(self, kubeconfig: str, namespace: str, name: str = "classifier",
                 every: float = 2.0) -> None:
        super().__init__(daemon=True, name="recorder")
        cfg = k8s.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.api = k8s.ApiClient(cfg)
        self.custom = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)
        self.namespace, self.name, self.every = namespace, name, every
        self.samples: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {"experiment": {}, "deployment": {}}
        self._halt = threading.Event()

    def get(self, plural: str, name: str | None = None) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, plural, name or self.name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def refresh(self) -> dict[str, Any]:
        """The statuses now, without recording them (the demo's own polling)."""
        exp = self.get(api.EXPERIMENT.plural) or {}
        mdep = self.get(api.MODEL_DEPLOYMENT.plural) or {}
        self.latest = {"t": time.time(), "experiment": exp.get("status") or {},
                       "deployment": mdep.get("status") or {}}
        return self.latest

    def sample(self) -> dict[str, Any]:
        """The statuses now, recorded for the report (every ``every`` seconds)."""
        row = self.refresh()
        self.samples.append(row)
        return row

    def run(self) -> None:
        while not self._halt.is_set():
            # a missed sample is a gap in a plot, never a failed demo
            with contextlib.suppress(Exception):
                self.sample()
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for ev in self.core.list_namespaced_event(self.namespace).items:
            when = ev.last_timestamp or ev.first_timestamp or ev.event_time
            out.append({"t": when.timestamp() if when else 0.0,
                        "kind": ev.involved_object.kind, "name": ev.involved_object.name,
                        "reason": ev.reason, "type": ev.type, "message": ev.message})
        return sorted(out, key=lambda e: e["t"])

    def close(self) -> None:
        self.api.close()
