"""What the local serving backend promises and records: its interface types and the
on-disk state (``<state_dir>/<namespace>/<name>/state.json``) that lets a restarted
operator re-attach to running processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from controller.serving.router_config import DEFAULT_MAX_BODY_BYTES, write_atomic

STATE_FILE = "state.json"


class ServingError(RuntimeError):
    """The backend cannot do what was asked (e.g. the serving environment is missing)."""


@dataclass
class PredictorSpec:
    """One predictor to serve; ``env`` adds model-server variables (e.g. TRELLIS_FAULT)."""

    name: str
    version: int
    model_uri: str
    weight: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class DesiredServing:
    namespace: str
    name: str
    predictors: list[PredictorSpec]
    log_dir: Path | None
    max_log_bytes: int
    auth_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


@dataclass
class PredictorState:
    version: int
    port: int
    pid: int
    healthy: bool
    message: str = ""


@dataclass
class ServingObserved:
    endpoint: str
    ready: bool
    predictors: dict[str, PredictorState]
    message: str = ""


@dataclass
class Proc:
    """A model server as recorded in state.json."""

    name: str
    version: int
    model_uri: str
    env_hash: str
    port: int
    metrics_port: int
    pid: int
    started_at: float
    log: str
    instance: str = ""  # echoed by /health/status: proves the port is still this server
    tmpdir: str = ""  # its own TMPDIR, removed once it is stopped

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def marker(self) -> list[str]:
        """Arguments that identify this server on its command line.

        (gunicorn would retitle its master if ``setproctitle`` were installed; the
        serving lock leaves it out, and must keep doing so for re-attach to work.)
        """
        return ["--http-port", str(self.port)]

    def matches(self, spec: PredictorSpec) -> bool:
        mine = (self.version, self.model_uri, self.env_hash)
        return mine == (spec.version, spec.model_uri, env_hash(spec.env))


@dataclass
class RouterProc:
    port: int
    pid: int
    started_at: float


@dataclass
class State:
    router: RouterProc | None = None
    predictors: dict[str, Proc] = field(default_factory=dict)
    retiring: list[Proc] = field(default_factory=list)  # replaced, stopped once unrouted


def env_hash(env: dict[str, str]) -> str:
    """Stored instead of the env itself, which may hold values not meant for disk."""
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]


def load_state(directory: Path) -> State:
    path = directory / STATE_FILE
    if not path.exists():
        return State()
    try:
        raw = json.loads(path.read_text())
        return State(
            router=RouterProc(**raw["router"]) if raw.get("router") else None,
            predictors={k: Proc(**v) for k, v in raw.get("predictors", {}).items()},
            retiring=[Proc(**v) for v in raw.get("retiring", [])],
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ServingError(f"{path} is unreadable ({exc}); stop its processes by hand") from exc


def save_state(directory: Path, state: State) -> None:
    write_atomic(directory / STATE_FILE, json.dumps(asdict(state), indent=2).encode())


def server_env(
    desired: DesiredServing, spec: PredictorSpec, serving_dir: Path, instance: str
) -> dict[str, str]:
    """A model server's environment: the operator's, minus what must not leak, plus its own.

    The ``SELDON_*``/``PREDICTOR_*`` variables give Seldon's metrics the same labels the
    Seldon Core operator would set in a cluster (``predictor_version`` = ``vN``).
    """
    env = {k: v for k, v in os.environ.items() if not _blocked(k)}
    env |= {
        "PYTHONPATH": str(serving_dir),
        "PYTHONUNBUFFERED": "1",
        "MODEL_URI": spec.model_uri,
        "TRELLIS_MODEL_VERSION": str(spec.version),
        "TRELLIS_INSTANCE_ID": instance,
        "TRELLIS_MAX_BODY_BYTES": str(desired.max_body_bytes),
        "INCLUDE_METRICS_IN_CLIENT_RESPONSE": "false",
        "SELDON_DEPLOYMENT_ID": desired.name,
        "PREDICTOR_ID": spec.name,
        "PREDICTOR_LABELS": json.dumps({"version": f"v{spec.version}"}),
        "PREDICTIVE_UNIT_ID": "classifier",
    }
    return env | spec.env


def _blocked(key: str) -> bool:
    """Operator variables a model server must not inherit (its own env is explicit)."""
    return key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") or key.startswith("TRELLIS_")
