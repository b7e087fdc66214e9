"""What a change to the spec repository will do, one line per consequence (pure).

Input: the objects before (the base ref, or the live cluster) and after (the head
ref), each with defaults applied, and each Experiment's flow code (``{path: digest}``)
on both sides. Output: ``Consequence`` records a reviewer reads like
"Experiment pumpkins/classifier: parameters.lr 0.01 → 0.001 ⇒ new training run (1 GPU)".

Which Experiment fields start a new training run (``TRAINING_FIELDS``) versus only
change a policy is decided here; so is how a ModelDeployment change reaches serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller import api

Key = tuple[str, str, str]  # kind, namespace, name
FlowCode = Mapping[str, str]  # path -> content digest
UNSET = object()
TRAINING_FIELDS = ("flow", "parameters", "resources", "backend", "objective")
ARROW, IMPLIES = "→", "⇒"


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any  # UNSET when absent
    new: Any

    def __str__(self) -> str:
        if self.path == "canary.steps":
            return f"canary steps {_value(self.old)} {ARROW} {_value(self.new)}"
        return f"{self.path} {_value(self.old)} {ARROW} {_value(self.new)}"

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "old": None if self.old is UNSET else self.old,
                "new": None if self.new is UNSET else self.new}


@dataclass(frozen=True)
class Consequence:
    """One line of the plan."""

    kind: str
    namespace: str
    name: str
    action: str  # create | update | delete | retrain
    what: str
    effect: str
    changes: tuple[FieldChange, ...] = ()
    files: tuple[str, ...] = field(default=())

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def line(self) -> str:
        if self.action == "retrain":
            return f"{self.what} {IMPLIES} {self.ref} {self.effect}"
        return f"{self.kind} {self.ref}: {self.what} {IMPLIES} {self.effect}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                "action": self.action, "line": self.line(), "effect": self.effect,
                "changes": [c.as_json() for c in self.changes], "files": list(self.files)}


def _value(v: Any) -> str:
    if v is UNSET or v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list) and all(isinstance(x, int | float) for x in v):
        return "/".join(_value(x) for x in v)
    if isinstance(v, list | dict):
        return str(v).replace("'", "")
    return str(v)


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to scalars and lists (lists compare whole)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value} if prefix else {}


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[FieldChange]:
    """Changed leaves of two specs, in path order (1 and 1.0 are the same number)."""
    a, b = _leaves(old), _leaves(new)
    changes = []
    for path in sorted(set(a) | set(b)):
        before, after = a.get(path, UNSET), b.get(path, UNSET)
        if not _same(before, after):
            changes.append(FieldChange(path, before, after))
    return changes


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return bool(a == b)


def compute(spec: Mapping[str, Any]) -> str:
    """``1 GPU`` / ``2 GPUs`` when the run asks for GPUs, else ``CPU``."""
    gpu = int((spec.get("resources") or {}).get("gpu", 0) or 0)
    return f"{gpu} GPU{'s' if gpu > 1 else ''}" if gpu else "CPU"


def _user_metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Labels and annotations the user wrote (not the ones a sync adds)."""
    meta = obj.get("metadata") or {}
    ours = (api.PREFIX, api.LABEL_MANAGED_BY)
    return {part: {k: v for k, v in (meta.get(part) or {}).items() if not k.startswith(ours)}
            for part in ("labels", "annotations")}


def _changed_code(old: FlowCode | None, new: FlowCode | None) -> list[str]:
    if old is None or new is None:
        return []
    return sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))


# ------------------------------------------------------------------------ per kind
def _experiment(key: Key, old: Mapping[str, Any] | None, new: Mapping[str, Any],
                code_old: FlowCode | None, code_new: FlowCode | None) -> list[Consequence]:
    kind, ns, name = key
    spec = new.get("spec") or {}
    if old is None:
        return [Consequence(kind, ns, name, "create", "new",
                            f"first training run ({compute(spec)})")]
    changes = diff(old.get("spec") or {}, spec)
    training = [c for c in changes if c.path.split(".")[0] in TRAINING_FIELDS]
    code = _changed_code(code_old, code_new)
    out = []
    if training:
        what = ", ".join(map(str, changes))
        if code:
            what += f", flow code changed ({', '.join(code)})"
        out.append(Consequence(kind, ns, name, "update", what,
                               f"new training run ({compute(spec)})", tuple(changes),
                               tuple(code)))
        return out
    if changes:
        out.append(Consequence(kind, ns, name, "update", ", ".join(map(str, changes)),
                               "policy updated, no new run", tuple(changes)))
    if code:
        out.append(Consequence(kind, ns, name, "retrain",
                               f"flow code changed ({', '.join(code)})", "retrains",
                               files=tuple(code)))
    elif not changes and _user_metadata(old) != _user_metadata(new):
        out.append(Consequence(kind, ns, name, "update", "labels or annotations changed",
                               "metadata only, no new run"))
    return out


def _serves(spec: Mapping[str, Any]) -> str:
    model = spec.get("model") or {}
    version = model.get("version", "latest")
    shown = "latest" if version == "latest" else f"v{version}"
    return f"serves {model.get('experiment')} {shown}"


def _steps(spec: Mapping[str, Any]) -> list[Any]:
    return list((spec.get("canary") or {}).get("steps") or [])


def _deployment_effect(change: FieldChange, spec: Mapping[str, Any]) -> str:
    top = change.path.split(".")[0]
    if change.path == "canary.steps":
        n = len(_steps(spec))
        return f"next version rolls out in {n} step{'s' if n != 1 else ''}"
    if top == "model":
        return f"{_serves(spec)} (rolled out as a canary)"
    if change.path == "replicas":
        return f"scales to {_value(change.new)} replica(s)"
    if top == "backend":
        return f"redeployed on {_value(change.new)}"
    if top == "canary":
        return "applies to the next rollout"
    if change.path == "drift.enabled":
        drift = spec.get("drift") or {}
        if drift.get("enabled"):
            return (f"drift checks start ({drift.get('test', 'ks')}, window "
                    f"{drift.get('window', 500)}, action {drift.get('action', 'alert')})")
        return "drift checks stop"
    if top == "drift":
        return "drift policy updated"
    if top == "auth":
        return "prediction endpoint auth updated"
    return "updated"


def _deployment(key: Key, old: Mapping[str, Any] | None,
                new: Mapping[str, Any]) -> list[Consequence]:
    kind, ns, name = key
    spec = new.get("spec") or {}
    if old is None:
        return [Consequence(kind, ns, name, "create", "new", _serves(spec))]
    changes = diff(old.get("spec") or {}, spec)
    # One line per effect: changes with the same consequence are listed together.
    grouped: dict[str, list[FieldChange]] = {}
    for change in changes:
        grouped.setdefault(_deployment_effect(change, spec), []).append(change)
    out = [Consequence(kind, ns, name, "update", ", ".join(map(str, group)), effect,
                       tuple(group)) for effect, group in grouped.items()]
    if not changes and _user_metadata(old) != _user_metadata(new):
        out.append(Consequence(kind, ns, name, "update", "labels or annotations changed",
                               "metadata only"))
    return out


def _other(key: Key, old: Mapping[str, Any] | None,
           new: Mapping[str, Any]) -> list[Consequence]:
    kind, ns, name = key
    if old is None:
        return [Consequence(kind, ns, name, "create", "new", "created")]
    changes = diff(old.get("spec") or {}, new.get("spec") or {})
    if not changes:
        return []
    return [Consequence(kind, ns, name, "update", ", ".join(map(str, changes)), "updated",
                        tuple(changes))]


def _removed(key: Key, prune: bool) -> Consequence:
    kind, ns, name = key
    if not prune:
        return Consequence(kind, ns, name, "delete", "removed", "left in the cluster (prune off)")
    effect = "pruned (stops serving)" if kind == api.MODEL_DEPLOYMENT.kind else "pruned"
    return Consequence(kind, ns, name, "delete", "removed", effect)


@dataclass
class Plan:
    consequences: list[Consequence]
    unchanged: int


def plan(old: Mapping[Key, Mapping[str, Any]], new: Mapping[Key, Mapping[str, Any]], *,
         code_old: Mapping[Key, FlowCode] | None = None,
         code_new: Mapping[Key, FlowCode] | None = None,
         blocked: set[Key] | frozenset[Key] = frozenset(), prune: bool = True) -> Plan:
    """Consequences of moving from ``old`` to ``new`` (objects with defaults applied).

    ``blocked`` holds keys whose head document is invalid or unreadable: they are
    neither reported as removed nor as changed (the errors section speaks for them).
    """
    code_old, code_new = code_old or {}, code_new or {}
    out: list[Consequence] = []
    unchanged = 0
    for key in sorted(set(old) | set(new)):
        if key in blocked:
            continue
        before, after = old.get(key), new.get(key)
        if after is None:
            out.append(_removed(key, prune))
            continue
        if key[0] == api.EXPERIMENT.kind:
            found = _experiment(key, before, after, code_old.get(key), code_new.get(key))
        elif key[0] == api.MODEL_DEPLOYMENT.kind:
            found = _deployment(key, before, after)
        else:
            found = _other(key, before, after)
        out.extend(found)
        unchanged += not found
    return Plan(out, unchanged)
