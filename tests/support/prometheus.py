"""A real Prometheus for the tests: the dev cluster's (``controller.devcluster.prometheus``),
queried by the operator's real PromQL, with what a test needs to look at it.

A test either starts its own server on loopback (``Prometheus(root).start()``: the
e2e tests, whose model servers are processes registered through ``file_sd`` files the
test rewrites, ``set_targets``, each target with the labels a cluster's scrape would add)
or reads the node cluster's, which finds model-server pods by itself through the API
server (``dev-cluster up --prometheus``). Either scrapes every second;
Prometheus applies a changed target list within about 5 s (its discovery manager batches
updates), so a new target is scraped some seconds after it appears, as in a cluster.
``stop`` then ``start`` brings a test's own server back on the same port with the same
data, which is how a test makes Prometheus unreachable for a while. Every query the
server answers is in ``queries()`` (Prometheus' own query log).
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.devcluster.prometheus import PrometheusError, PrometheusServer


@dataclass(frozen=True)
class Target:
    """One scrape target: ``host:port``, its metrics path, the labels the scrape adds."""

    address: str
    path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)

    def group(self) -> dict[str, Any]:
        """Its ``file_sd`` entry (``__metrics_path__`` is per target, as relabelling sets it)."""
        return {"targets": [self.address],
                "labels": {**self.labels, "__metrics_path__": self.path}}


class Prometheus(PrometheusServer):
    """The server plus the test's view of it: targets, queries, waits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._targets: dict[str, list[Target]] = {}

    def start(self, timeout: float = 30.0) -> Prometheus:  # type: ignore[override]
        super().start(timeout)
        return self

    def set_targets(self, name: str, targets: Iterable[Target]) -> None:
        """Replace the targets in ``targets/<name>.json`` (atomically: Prometheus watches
        the directory and must never read half a file)."""
        self._targets[name] = list(targets)
        directory = self.root / "targets"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.json.tmp"
        tmp.write_text(json.dumps([t.group() for t in self._targets[name]], indent=2))
        os.replace(tmp, directory / f"{name}.json")

    # ------------------------------------------------------------------ reading
    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def value(self, promql: str) -> float | None:
        """The single value of an instant query (None: no series)."""
        rows = self.query(promql)
        if len(rows) > 1:
            raise PrometheusError(f"{promql} has {len(rows)} series, not one")
        return float(rows[0]["value"][1]) if rows else None

    def wait_value(self, promql: str, check, timeout: float = 30.0,
                   what: str = "") -> float | None:
        """Poll an instant query until ``check(value)`` holds (value None: no series)."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.value(promql)
            if check(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what or promql} (last: {last})")

    def targets_up(self) -> dict[str, str]:
        """``address -> health`` of the active targets."""
        return {t["labels"]["instance"]: t["health"]
                for t in self.api("targets", state="active")["activeTargets"]}

    def wait_scraped(self, address: str, timeout: float = 30.0) -> None:
        """Until ``address`` has been scraped successfully (discovery takes ~5 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.targets_up().get(address) == "up":
                return
            time.sleep(0.2)
        raise AssertionError(f"{address} not scraped within {timeout:.0f}s: "
                             f"{self.targets_up()}")

    def queries(self, since: float = 0.0) -> list[str]:
        """Every PromQL expression this server evaluated from ``since`` (epoch seconds)
        on, in order (its query log)."""
        path = self.root / "queries.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                if since and datetime.fromisoformat(entry["ts"]).timestamp() < since:
                    continue
                out.append(entry["params"]["query"])
            except (ValueError, KeyError):
                continue
        return out

    @property
    def port(self) -> int:
        st = self.state()
        assert st is not None, "not started"
        return st.port
