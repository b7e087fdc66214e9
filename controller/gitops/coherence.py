"""Coherence of a ModelDeployment's canary and drift settings (pure).

Each field can be valid on its own while the combination cannot work; the schema
cannot see that, so ``trellis validate`` (and every sync) checks these rules:

1. ``drift.action: retrain`` needs ``drift.cooldown`` ≥ ``canary.interval`` × steps:
   otherwise a retrained version can arrive before the previous canary could finish,
   and rollouts pile up.
2. ``drift.enabled`` needs the window to fit the request log: ``drift.window`` inputs
   at about 12 KiB each (a 64×64×3 photo plus features, docs/contracts.md) must fit in
   ``drift.storage.maxBytes``; otherwise the window never fills and drift is never tested.
3. ``drift.action: retrain`` with a pinned ``model.version``: retrained versions would
   never be served; use ``latest``.
4. ``drift.minAccuracy`` above the Experiment's objective threshold (metric
   ``accuracy``, goal ``maximize``): a model that meets its objective would trigger a
   retrain at once, forever.
"""

from __future__ import annotations

from typing import Any

from controller.canary import parse_duration
from controller.schema import Problem

BYTES_PER_LOGGED_INPUT = 64 * 64 * 3 + 64 * 4 + 256  # photo (uint8) + features + bookkeeping


def format_seconds(seconds: float) -> str:
    """``90`` → ``1m30s`` (the spec's own duration syntax)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return out + (f"{secs}s" if secs or not out else "")


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{int(n)} B"


def deployment_problems(spec: dict[str, Any],
                        experiment_spec: dict[str, Any] | None = None) -> list[Problem]:
    """Broken combinations in a ModelDeployment ``spec`` (defaults applied).

    ``experiment_spec`` is the referenced Experiment's spec when it is known.
    """
    problems: list[Problem] = []
    canary = spec.get("canary") or {}
    drift = spec.get("drift") or {}
    enabled = bool(drift.get("enabled"))
    retrain = enabled and drift.get("action") == "retrain"
    steps = list(canary.get("steps") or [])
    try:
        interval = parse_duration(str(canary.get("interval", "30s")))
        cooldown = parse_duration(str(drift.get("cooldown", "10m")))
    except ValueError:  # the schema reports malformed durations
        return problems
    rollout = interval * len(steps)
    if retrain and cooldown < rollout:
        problems.append(Problem(
            ("spec", "drift", "cooldown"),
            f"drift.cooldown {format_seconds(cooldown)} is shorter than one canary rollout "
            f"({len(steps)} steps × {format_seconds(interval)} = {format_seconds(rollout)}): "
            "a retrained version could arrive before the previous canary finished"))
    window = int(drift.get("window", 500))
    max_bytes = int((drift.get("storage") or {}).get("maxBytes", 268435456))
    needed = window * BYTES_PER_LOGGED_INPUT
    if enabled and needed > max_bytes:
        problems.append(Problem(
            ("spec", "drift", "window"),
            f"drift.window of {window} inputs needs about {format_bytes(needed)} of request "
            f"log but drift.storage.maxBytes is {format_bytes(max_bytes)}: the window "
            "would never fill"))
    version = (spec.get("model") or {}).get("version", "latest")
    if retrain and isinstance(version, int):
        problems.append(Problem(
            ("spec", "model", "version"),
            f"model.version is pinned to {version} but drift.action is retrain: retrained "
            "versions would never be served (use latest)"))
    objective = (experiment_spec or {}).get("objective") or {}
    min_acc = drift.get("minAccuracy")
    if (enabled and min_acc is not None and objective.get("metric") == "accuracy"
            and objective.get("goal") == "maximize"
            and float(min_acc) > float(objective.get("threshold", 0))):
        experiment = (spec.get("model") or {}).get("experiment")
        problems.append(Problem(
            ("spec", "drift", "minAccuracy"),
            f"drift.minAccuracy {min_acc} is above Experiment {experiment}'s objective "
            f"(accuracy >= {objective.get('threshold')}): a model meeting its objective "
            "would trigger a retrain at once"))
    return problems
