"""Offline validation against the CRDs in ``crds/`` — the same schema the API server uses.

The OpenAPI v3 schema is checked with jsonschema (Kubernetes extensions translated),
structural defaults are applied the way the API server applies them, and the CEL
``x-kubernetes-validations`` rules are evaluated with cel-python, so a file that
``trellis validate`` accepts is one the API server accepts, and the messages match.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

from controller import api
from controller.paths import CRDS_DIR

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an object; ``path`` is a field path like ``spec.canary.steps``."""

    path: tuple[str | int, ...]
    message: str

    @property
    def field(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out or "<root>"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@functools.cache
def load_crds(crds_dir: Path = CRDS_DIR) -> dict[str, dict[str, Any]]:
    """openAPIV3Schema per kind, read once from ``crds/``."""
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(crds_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            kind = doc["spec"]["names"]["kind"]
            version = next(v for v in doc["spec"]["versions"] if v["name"] == api.VERSION)
            schemas[kind] = version["schema"]["openAPIV3Schema"]
    return schemas


# --------------------------------------------------------------------------- defaults
def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: fill absent properties that declare a ``default``."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = dict(value)
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in out:
                if name not in props:
                    out[name] = apply_defaults(extra, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


# ------------------------------------------------------------------ structural schema
def to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """Translate Kubernetes' OpenAPI dialect to draft-4 JSON Schema (strict on unknown
    fields, as ``kubectl --validate=strict`` is)."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes") and k != "default"}
    out.pop("format", None)
    if schema.get("x-kubernetes-int-or-string"):
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in schema:
        out["properties"] = {k: to_jsonschema(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = to_jsonschema(schema["items"])
    if "anyOf" in schema:
        out["anyOf"] = [to_jsonschema(s) for s in schema["anyOf"]]
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(to_jsonschema(load_crds()[kind]))


def _schema_problems(kind: str, obj: dict[str, Any]) -> Iterator[Problem]:
    for err in sorted(_validator(kind).iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and not err.validator_value:
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            for name in extra:
                yield Problem((*path, name), "unknown field")
            continue
        if err.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", err.message)
            yield Problem((*path, *(missing[:1])), "Required value")
            continue
        yield Problem(path, _friendly(err))


def _friendly(err: jsonschema.ValidationError) -> str:
    v, inst = err.validator, err.instance
    if v == "enum":
        allowed = ", ".join(f'"{x}"' for x in err.validator_value)
        return f'Unsupported value: "{inst}": supported values: {allowed}'
    if v == "minimum":
        op = ">" if err.schema.get("exclusiveMinimum") else ">="
        return f"Invalid value: {inst}: should be {op} {err.validator_value}"
    if v == "maximum":
        op = "<" if err.schema.get("exclusiveMaximum") else "<="
        return f"Invalid value: {inst}: should be {op} {err.validator_value}"
    if v == "type":
        return f'Invalid value: "{type(inst).__name__}": must be of type {err.validator_value}'
    if v == "anyOf":
        return f"Invalid value: {inst!r}: must be an integer or a string"
    if v == "pattern":
        return f'Invalid value: "{inst}": should match \'{err.validator_value}\''
    if v in ("minItems", "maxItems", "minLength", "maxLength", "maxProperties"):
        return f"Invalid value: {err.message}"
    return err.message


# ------------------------------------------------------------------------------- CEL
def _is_sorted(lst: celtypes.ListType) -> celtypes.BoolType:
    return celtypes.BoolType(all(lst[i] <= lst[i + 1] for i in range(len(lst) - 1)))


# The Kubernetes CEL library functions our rules use, beyond standard CEL.
K8S_CEL_FUNCTIONS = {"isSorted": _is_sorted}


@functools.cache
def _cel_program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=K8S_CEL_FUNCTIONS)


def _cel_problems(schema: dict[str, Any], value: Any, path: tuple) -> Iterator[Problem]:
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = _cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:  # a rule that cannot evaluate is a failed rule
            ok = False
            detail = f" ({exc.args[0]})" if exc.args else ""
            yield Problem(path, f"Invalid value: {rule.get('message', rule['rule'])}{detail}")
            continue
        if not bool(ok):
            message = rule.get("message", "failed rule: " + rule["rule"])
            yield Problem(path, f"Invalid value: {message}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in value:
                yield from _cel_problems(sub, value[name], (*path, name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in props:
                    yield from _cel_problems(extra, item, (*path, name))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _cel_problems(schema["items"], item, (*path, i))


# ---------------------------------------------------------------------------- public
def validate_object(obj: Any) -> list[Problem]:
    """Every problem the API server (plus strict field validation) would report."""
    if not isinstance(obj, dict):
        return [Problem((), "a Kubernetes object must be a YAML mapping")]
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    if not kind:
        return [Problem(("kind",), "Required value: every object needs a kind")]
    schemas = load_crds()
    if kind not in schemas:
        known = ", ".join(sorted(schemas))
        return [Problem(("kind",), f'unknown kind "{kind}" (Trellis kinds: {known})')]
    if api_version != api.API_VERSION:
        return [Problem(("apiVersion",),
                        f'Unsupported value: "{api_version}": expected "{api.API_VERSION}"')]
    problems = list(_metadata_problems(obj.get("metadata")))
    schema = schemas[kind]
    structural = list(_schema_problems(kind, obj))
    problems += structural
    if not structural:
        problems += list(_cel_problems(schema, apply_defaults(schema, obj), ()))
    return problems


def _metadata_problems(meta: Any) -> Iterator[Problem]:
    if not isinstance(meta, dict):
        yield Problem(("metadata",), "Required value: metadata with a name")
        return
    name = meta.get("name")
    if not name:
        yield Problem(("metadata", "name"), "Required value: name is required")
    elif not isinstance(name, str) or len(name) > 63 or not DNS_LABEL.match(name):
        yield Problem(("metadata", "name"),
                      f'Invalid value: "{name}": must be a DNS label (lower-case letters, '
                      "digits and '-', at most 63 characters)")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not DNS_LABEL.match(ns)):
        yield Problem(("metadata", "namespace"), f'Invalid value: "{ns}": must be a DNS label')


def with_defaults(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the API server would store it (defaults applied)."""
    return apply_defaults(load_crds()[obj["kind"]], obj)


def spec_section(kind: str, name: str, value: dict[str, Any] | None) -> dict[str, Any]:
    """``spec.<name>`` with the CRD's defaults filled in, so decision code reads every
    default from the schema instead of restating it."""
    section = load_crds()[kind]["properties"]["spec"]["properties"][name]
    return apply_defaults(section, dict(value or {}))
