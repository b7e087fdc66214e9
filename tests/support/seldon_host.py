"""What Seldon Core's operator would run for a SeldonDeployment, as processes on this
host, and the ingress that splits traffic between its predictors.

Seldon Core's operator cannot be built here: ``tests.support.seldon`` writes its status on
the API server, and this module runs what its pods would. For each predictor of the
rendered SeldonDeployment, ``SeldonHost.sync`` starts

- the model server its container names: a real ``seldon-core-microservice`` (from
  ``.venv-serving``) with the environment Seldon's operator injects (``model_env``:
  ``PREDICTOR_ID``, ``PREDICTOR_LABELS``, ``SELDON_DEPLOYMENT_ID``, the ports, the metrics
  endpoint ``/prometheus``), the model read from ``<models>/<last part of modelUri>``
  where Seldon's storage initializer would have downloaded ``modelUri`` to ``/mnt/models``;
- in front of it, the executor stand-in (``tests.support.executor_metrics``), given the
  predictor as Seldon's operator gives it to the executor;

and registers both with the test's Prometheus as a PodMonitor would find them, the
namespace as a target label (named as the test's label scheme says). A predictor whose
spec changed gets new processes, which take its traffic once healthy (a rolling update);
one whose model is missing never comes up, and the old processes keep serving, as a
Deployment whose new pods fail does.

``Ingress`` plays the Istio VirtualService Seldon's operator writes: a steady stream of
predictions (and optionally feedback) split by the predictors' ``traffic`` weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from controller.paths import ROOT
from controller.processes import free_port, pid_alive, terminate
from tests.support.executor_metrics import encode_predictor
from tests.support.prometheus import Prometheus, Target

SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
EXECUTOR = Path(__file__).resolve().with_name("executor_metrics.py")
METRICS_PATH = "/prometheus"  # Seldon's operator: --prometheus_path and the model's endpoint
MODEL_CLASS = "PumpkinModel"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
PREDICT = "/api/v1.0/predictions"
FEEDBACK = "/api/v1.0/feedback"


class SeldonHostError(RuntimeError):
    pass


def model_env(sdep: dict[str, Any], predictor: dict[str, Any], container: dict[str, Any], *,
              http_port: int, grpc_port: int, metrics_port: int) -> dict[str, str]:
    """A MODEL unit's environment as Seldon 1.17.1's operator sets it (its container's own
    ``env``, then ``addPortEnvs``, ``addModelEnvs`` and the identifiers of
    ``createContainerService``): the Python wrapper labels its metrics from these
    (``predictor_version`` from ``PREDICTOR_LABELS``' ``version``)."""
    env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or []}
    env.setdefault("PREDICTIVE_UNIT_SERVICE_PORT", str(http_port))
    env |= {
        "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http_port),
        "MLSERVER_HTTP_PORT": str(http_port),
        "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(grpc_port),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "PREDICTIVE_UNIT_ID": container["name"],
        "MLSERVER_MODEL_NAME": container["name"],
        "PREDICTIVE_UNIT_IMAGE": container.get("image", ""),
        "PREDICTOR_ID": predictor["name"],
        "PREDICTOR_LABELS": json.dumps(predictor.get("labels") or {}, separators=(",", ":")),
        "SELDON_DEPLOYMENT_ID": sdep["metadata"]["name"],
        "SELDON_EXECUTOR_ENABLED": "true",
        "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(metrics_port),
        "PREDICTIVE_UNIT_METRICS_ENDPOINT": METRICS_PATH,
        "MLSERVER_METRICS_PORT": str(metrics_port),
        "MLSERVER_METRICS_ENDPOINT": METRICS_PATH,
    }
    if predictor["graph"].get("modelUri"):
        env["MLSERVER_MODEL_URI"] = "/mnt/models"
    return env


def model_container(predictor: dict[str, Any]) -> dict[str, Any]:
    """The container named after the graph's node (Seldon's webhook requires one)."""
    node = predictor["graph"]["name"]
    for spec in predictor.get("componentSpecs") or []:
        for container in spec["spec"].get("containers") or []:
            if container["name"] == node:
                return container
    raise SeldonHostError(f"predictor {predictor['name']} has no container named {node}")


def spec_key(predictor: dict[str, Any]) -> str:
    """What makes new pods: everything but the traffic weight and the replica count."""
    return json.dumps({k: v for k, v in predictor.items() if k not in ("traffic", "replicas")},
                      sort_keys=True)


@dataclass
class Proc:
    pid: int
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class PredictorProcs:
    """One predictor's "pod": its model server and the executor in front of it."""

    name: str
    key: str
    deployment: str  # the SeldonDeployment's name
    predictor: dict[str, Any]
    model: Proc
    metrics_port: int
    executor: Proc

    @property
    def url(self) -> str:
        return f"http://{self.executor.address}"

    @property
    def version(self) -> str:
        return (self.predictor.get("annotations") or {}).get("version", "")


def _spawn(argv: Sequence[str], env: dict[str, str], cwd: Path, log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return proc.pid


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def _wait_ok(proc: Proc, url: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(proc.pid):
            raise SeldonHostError(f"exited while starting:\n{_tail(proc.log)}")
        if _get(url) == 200:
            return
        time.sleep(0.1)
    raise SeldonHostError(f"{url} not answering after {timeout:.0f}s:\n{_tail(proc.log)}")


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _server_env() -> dict[str, str]:
    """This process' environment minus what must not reach a model server."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
            and not k.startswith("TRELLIS_")}


class SeldonHost:
    """A SeldonDeployment's predictors as processes; see the module docstring."""

    def __init__(self, root: Path, prometheus: Prometheus, models: Path, namespace: str, *,
                 namespace_label: str = "namespace", ingress: Ingress | None = None) -> None:
        self.root = root
        self.prometheus = prometheus
        self.models = models
        self.namespace = namespace
        self.namespace_label = namespace_label
        self.ingress = ingress
        self.procs: dict[str, PredictorProcs] = {}
        self.missing: dict[str, str] = {}  # predictor -> why its pods never came up
        if not (SERVING_PYTHON.parent / "seldon-core-microservice").exists():
            raise SeldonHostError(f"serving environment missing: {SERVING_PYTHON.parent.parent}")
        # The model servers' TMPDIR: seldon-core's multiprocessing manager, stopped with
        # its server, leaves a pymp-* directory there (and its socket path must stay
        # short, so not under the test's own directory).
        self.scratch = tempfile.mkdtemp(prefix="seldon-host-")

    # ------------------------------------------------------------------- sync
    def sync(self, sdep: dict[str, Any]) -> None:
        """Run what ``sdep``'s predictors need, stop what they no longer do, then point
        Prometheus and the ingress at the result. New model servers start side by side
        (a torch import each); each takes its predictor's traffic once healthy, before
        the processes it replaces stop."""
        wanted = {p["name"]: p for p in sdep["spec"]["predictors"]}
        self.missing = {}
        starting: list[tuple[dict[str, Any], Proc, int]] = []
        try:
            for name, predictor in wanted.items():
                current = self.procs.get(name)
                if current is not None and current.key == spec_key(predictor):
                    current.predictor = predictor  # the traffic weight may have changed
                    continue
                source = self.model_dir(predictor)
                if not (source / "model.pt").exists():
                    self.missing[name] = f"no model at {source}"
                    continue
                starting.append((predictor, *self._spawn_model(sdep, predictor, source)))
            while starting:
                predictor, model, metrics_port = starting.pop(0)
                fresh = self._finish_start(sdep, predictor, model, metrics_port)
                old = self.procs.get(fresh.name)
                self.procs[fresh.name] = fresh
                self._publish(sdep)
                if old is not None:
                    self._stop(old)
        finally:
            for _, model, _ in starting:  # a start failed: the others never served
                terminate(model.pid, STOP_GRACE_S)
        gone = [self.procs.pop(n) for n in [n for n in self.procs if n not in wanted]]
        self._publish(sdep)  # no traffic, no scrapes for what goes ...
        for procs in gone:
            self._stop(procs)  # ... before it stops

    def model_dir(self, predictor: dict[str, Any]) -> Path:
        """Where the storage initializer would have put ``modelUri``: here, a directory
        of the test's models named like the URI's last part (the version)."""
        uri = predictor["graph"].get("modelUri") or ""
        return self.models / Path(urlparse(uri).path.rstrip("/")).name

    def _publish(self, sdep: dict[str, Any]) -> None:
        labels = {self.namespace_label: self.namespace} if self.namespace_label else {}
        targets = []
        for procs in self.procs.values():
            targets += [Target(procs.executor.address, METRICS_PATH, labels),
                        Target(f"127.0.0.1:{procs.metrics_port}", METRICS_PATH, labels)]
        self.prometheus.set_targets(sdep["metadata"]["name"], targets)
        if self.ingress is not None:
            weights = {p["name"]: int(p.get("traffic", 0)) for p in sdep["spec"]["predictors"]}
            self.ingress.route({name: ((self.procs[name].url if name in self.procs else None),
                                       weight) for name, weight in weights.items()})

    # -------------------------------------------------------------- processes
    def _spawn_model(self, sdep: dict[str, Any], predictor: dict[str, Any],
                     source: Path) -> tuple[Proc, int]:
        """The model server, started (not yet healthy), and its metrics port."""
        container = model_container(predictor)
        http_port, metrics_port, grpc_port = free_port(), free_port(), free_port()
        env = _server_env() | model_env(sdep, predictor, container, http_port=http_port,
                                        grpc_port=grpc_port, metrics_port=metrics_port)
        env |= {"MODEL_URI": str(source), "PYTHONPATH": str(ROOT / "serving"),
                "PYTHONUNBUFFERED": "1", "TMPDIR": self.scratch}
        log = self.root / f"{predictor['name']}-{source.name}-{http_port}-model.log"
        script = SERVING_PYTHON.parent / "seldon-core-microservice"
        argv = [str(script), MODEL_CLASS, "--service-type", "MODEL",
                "--http-port", str(http_port), "--metrics-port", str(metrics_port),
                "--grpc-workers", "0"]  # 1.17.1 would open gRPC on a fixed 5000 otherwise
        return Proc(_spawn(argv, env, ROOT / "serving", log), http_port, log), metrics_port

    def _finish_start(self, sdep: dict[str, Any], predictor: dict[str, Any], model: Proc,
                      metrics_port: int) -> PredictorProcs:
        """Wait for the model server, then put the executor in front of it."""
        try:
            _wait_ok(model, f"http://{model.address}/health/status")
            tag = model.log.name.removesuffix("-model.log")
            executor = self._start_executor(sdep["metadata"]["name"], predictor, model,
                                            free_port(), tag)
        except BaseException:
            terminate(model.pid, STOP_GRACE_S)
            raise
        return PredictorProcs(predictor["name"], spec_key(predictor), sdep["metadata"]["name"],
                              predictor, model, metrics_port, executor)

    def _start_executor(self, deployment: str, predictor: dict[str, Any], model: Proc,
                        port: int, tag: str) -> Proc:
        log = self.root / f"{tag}-executor.log"
        argv = [sys.executable, str(EXECUTOR), "--sdep", deployment,
                "--namespace", self.namespace, "--predictor", predictor["name"],
                "--http_port", str(port), "--prometheus_path", METRICS_PATH,
                "--upstream", f"http://{model.address}"]
        env = _server_env() | {"ENGINE_PREDICTOR": encode_predictor(predictor)}
        proc = Proc(_spawn(argv, env, self.root, log), port, log)
        try:
            _wait_ok(proc, f"http://{proc.address}/ready", timeout=20)
        except BaseException:
            terminate(proc.pid, STOP_GRACE_S)
            raise
        return proc

    def restart_executor(self, name: str) -> None:
        """The predictor's executor process starts again (same port, as a container
        restarted in its pod): its counters begin again at zero."""
        procs = self.procs[name]
        terminate(procs.executor.pid, STOP_GRACE_S)
        tag = procs.executor.log.name.removesuffix("-executor.log")
        procs.executor = self._start_executor(procs.deployment, procs.predictor, procs.model,
                                              procs.executor.port, tag)

    def _stop(self, procs: PredictorProcs) -> None:
        terminate(procs.executor.pid, STOP_GRACE_S)
        terminate(procs.model.pid, STOP_GRACE_S)

    def close(self) -> None:
        if self.ingress is not None:
            self.ingress.route({})
        for procs in self.procs.values():
            self._stop(procs)
        self.procs = {}
        shutil.rmtree(self.scratch, ignore_errors=True)


class Ingress:
    """A steady request stream split by weight (smooth weighted round robin, so a 10%
    predictor gets every tenth request), paced to ``rate`` per second, one request at a
    time. Each predictor goes through the bodies in the same order, so their predicted
    classes compare like for like. A predictor with a weight but no running pods answers
    503, as Envoy does for a route with no healthy upstream. ``feedback_every`` > 0
    follows every n-th successful prediction of a predictor with a feedback call to it
    (which Seldon's executor counts on the same histogram, ``service="feedback"``)."""

    def __init__(self, bodies: Sequence[bytes], rate: float = 20.0, feedback_every: int = 0,
                 timeout_s: float = 10.0) -> None:
        self.bodies = list(bodies)
        self.rate = rate
        self.feedback_every = feedback_every
        self.timeout_s = timeout_s
        self.sent: Counter[tuple[str, str, int]] = Counter()  # (predictor, service, code)
        self._routes: dict[str, tuple[str | None, int]] = {}
        self._current: dict[str, int] = {}
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def route(self, routes: dict[str, tuple[str | None, int]]) -> None:
        with self._lock:
            self._routes = {k: v for k, v in routes.items() if v[1] > 0}
            self._current = {k: self._current.get(k, 0) for k in self._routes}

    def start(self) -> Ingress:
        self._running.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ingress", daemon=True)
            self._thread.start()
        return self

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self.start()

    def stop(self) -> None:
        self._stopped.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)

    def _pick(self) -> tuple[str, str | None] | None:
        with self._lock:
            if not self._routes:
                return None
            total = sum(w for _, w in self._routes.values())
            for name, (_, weight) in self._routes.items():
                self._current[name] += weight
            name = max(self._current, key=lambda k: self._current[k])
            self._current[name] -= total
            return name, self._routes[name][0]

    def _run(self) -> None:
        served: Counter[str] = Counter()
        while not self._stopped.is_set():
            self._running.wait()
            started = time.monotonic()
            picked = self._pick()
            if picked is not None:
                name, url = picked
                body = self.bodies[served[name] % len(self.bodies)]
                served[name] += 1
                code = 503 if url is None else post(url + PREDICT, body, self.timeout_s)
                self.sent[(name, "predictions", code)] += 1
                if url is not None and code == 200 and self.feedback_every and \
                        served[name] % self.feedback_every == 0:
                    code = post(url + FEEDBACK, b'{"reward": 1.0}', self.timeout_s)
                    self.sent[(name, "feedback", code)] += 1
            time.sleep(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))

    def count(self, predictor: str, service: str = "predictions",
              code: int | None = None) -> int:
        return sum(n for (p, s, c), n in list(self.sent.items())
                   if p == predictor and s == service and (code is None or c == code))


def post(url: str, body: bytes, timeout_s: float = 10.0) -> int:
    """The status of a JSON POST (0: no answer at all)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0
