"""Offline validation against the CRDs in ``crds/`` — the same schema the API server uses.

The OpenAPI v3 schema is checked with jsonschema (Kubernetes extensions translated),
structural defaults are applied the way the API server applies them, and the CEL
``x-kubernetes-validations`` rules are evaluated with cel-python, so a file that
``trellis validate`` accepts is one the API server accepts, and the messages match.

"The way the API server does it" is meant to the letter (``tests/integration/
test_spec_fuzz.py`` compares verdicts on generated documents): the document is first
read as the JSON that reaches the server (no NaN, keys as strings); ``metadata`` is
ObjectMeta (``controller.objectmeta``); ``status`` is dropped on create and apply, so
only its unknown fields count; a ``null`` field counts as absent (pruned, then
defaulted); an integer field takes a float with an integral value (2.0; as the server's
OpenAPI validator does) but a CEL rule that reads it fails; patterns are anchored the
Go way (``$`` is the end of the text, not the end of a line).

One deliberate difference, stricter than the server: ``spec.parameters`` names must be
identifiers and values scalars (``controller.validate.semantic_problems``); the schema
cannot say it (untyped values cannot be typed for CEL) and the operator refuses such a
spec before a launch anyway.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

from controller import api, objectmeta, quantities
from controller.paths import CRDS_DIR

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_SAFE_FLOAT_INT = 2**53 - 1  # go-openapi's IsFloat64AJSONInteger bound


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


# ------------------------------------------------------------------ the JSON it becomes
def json_value(value: Any, path: tuple = ()) -> tuple[Any, list[Problem]]:
    """``value`` as the JSON that reaches the API server, and what JSON cannot carry.

    YAML can say more than JSON: non-string keys (``1: x`` becomes ``"1"``, as kubectl
    converts it; a null key kubectl refuses), timestamps (sent as strings), NaN and
    infinities and integers beyond a float64 (which kubectl and the server refuse), binary
    values and sets.
    """
    problems: list[Problem] = []
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                name = key
            elif isinstance(key, bool) or (isinstance(key, int) and INT64_MIN <= key <= INT64_MAX):
                name = json.dumps(key)
            elif isinstance(key, float):
                name = json.dumps(key) if math.isfinite(key) else str(key)
            else:  # kubectl's YAML-to-JSON refuses null keys (and integers beyond int64)
                problems.append(Problem(path, f"Invalid value: {key!r} as a mapping key: "
                                              "kubectl cannot send it (keys must be strings)"))
                continue
            if name in out:
                problems.append(Problem((*path, name), f'duplicate field "{name}" (as JSON)'))
                continue
            out[name], found = json_value(item, (*path, name))
            problems += found
        return out, problems
    if isinstance(value, list):
        items = []
        for i, item in enumerate(value):
            converted, found = json_value(item, (*path, i))
            items.append(converted)
            problems += found
        return items, problems
    if isinstance(value, float) and not math.isfinite(value):
        return value, [Problem(path, f"Invalid value: {value}: not a JSON number "
                                     "(NaN and infinities cannot be sent to the API server)")]
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            return value, [Problem(path, "Invalid value: number too large for the API server "
                                         "(beyond float64)")]
        return value, []
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat(), []
    if value is None or isinstance(value, str | bool | float):
        return value, []
    return value, [Problem(path, f"Invalid value: a YAML {type(value).__name__} is not a "
                                 "JSON value")]


def prune_nulls(schema: dict[str, Any] | None, value: Any) -> Any:
    """Drop ``null`` fields the schema knows (none of ours is nullable): the API server
    prunes them before defaulting, so ``gpu: null`` is an absent ``gpu`` (defaulted) and
    ``flow: null`` an absent ``flow`` (required). Unknown fields stay, to be reported."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub = _field_schema(schema, key)
            if item is None and sub is not None:
                continue
            out[key] = prune_nulls(sub, item)
        return out
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema, dict) else None
        return [prune_nulls(items if isinstance(items, dict) else None, v) for v in value]
    return value


def _field_schema(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if not isinstance(schema, dict):
        return None
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


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


def _is_integer(checker: Any, instance: Any) -> bool:
    """An int64, or a float with an integral value within 2**53 (the server's OpenAPI
    validator takes ``2.0`` for an integer; a JSON integer beyond int64 is a float there)."""
    if isinstance(instance, bool):
        return False
    if isinstance(instance, int):
        return INT64_MIN <= instance <= INT64_MAX
    return (isinstance(instance, float) and math.isfinite(instance) and instance.is_integer()
            and abs(instance) <= MAX_SAFE_FLOAT_INT)


def _is_number(checker: Any, instance: Any) -> bool:
    return not isinstance(instance, bool) and isinstance(instance, int | float)


@functools.cache
def go_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` with Go's (RE2's) anchors: ``$`` outside a class is the end of the text
    (Python's ``$`` also matches before a final newline, so "name\\n" would pass)."""
    out, escaped, in_class = [], False, False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class:
            in_class = False
        elif ch == "$" and not in_class:
            out.append(r"\Z")
            continue
        out.append(ch)
    return re.compile("".join(out))


def _go_pattern(validator: Any, pattern: str, instance: Any, schema: dict) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not go_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    validators={"pattern": _go_pattern},
    type_checker=jsonschema.Draft4Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_number}),
)


@functools.cache
def _validator(kind: str) -> Any:
    return _Validator(to_jsonschema(_spec_schema(kind)))


@functools.cache
def _spec_schema(kind: str) -> dict[str, Any]:
    """The CRD schema without ``status``: the server drops a created or applied object's
    status (the status subresource owns it), so only its unknown fields matter."""
    schema = dict(load_crds()[kind])
    schema["properties"] = {k: v for k, v in schema.get("properties", {}).items()
                            if k != "status"}
    return schema


def unknown_fields(schema: dict[str, Any] | None, value: Any, path: tuple) -> Iterator[Problem]:
    """The API server's structural pruning, which strict field validation turns into
    errors: every key the schema does not declare, even under a value of the wrong type
    (a map where a list or a scalar belongs has only unknown keys)."""
    if isinstance(schema, dict) and schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = (schema or {}).get("properties") or {}
        extra = (schema or {}).get("additionalProperties")
        for key, item in value.items():
            if key in props:
                yield from unknown_fields(props[key], item, (*path, key))
            elif isinstance(extra, dict):
                yield from unknown_fields(extra, item, (*path, key))
            else:
                yield Problem((*path, key), "unknown field")
    elif isinstance(value, list):
        items = (schema or {}).get("items")
        for i, item in enumerate(value):
            yield from unknown_fields(items if isinstance(items, dict) else None, item,
                                      (*path, i))


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
    quantity = err.schema.get("pattern") == quantities.PATTERN
    if v == "anyOf":
        hint = f' (a quantity such as "{inst}" or "500m" is a string)' if quantity else ""
        return f"Invalid value: {inst!r}: must be an integer or a string{hint}"
    if v == "pattern" and quantity:
        return (f'Invalid value: "{inst}": not a Kubernetes quantity (such as 500m, 2, 1.5, '
                "512Mi, 4Gi or 2G)")
    if v == "pattern":
        return f'Invalid value: "{inst}": should match \'{err.validator_value}\''
    if v in ("minItems", "maxItems", "minLength", "maxLength", "maxProperties"):
        return f"Invalid value: {err.message}"
    return err.message


# ------------------------------------------------------------------------------- CEL
def _is_sorted(lst: celtypes.ListType) -> celtypes.BoolType:
    return celtypes.BoolType(all(lst[i] <= lst[i + 1] for i in range(len(lst) - 1)))


# The Kubernetes CEL library functions our rules use, beyond standard CEL.
K8S_CEL_FUNCTIONS = {"isSorted": _is_sorted, **quantities.CEL_FUNCTIONS}


@functools.cache
def _cel_program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=K8S_CEL_FUNCTIONS)


class InvalidData:
    """A value CEL cannot read (the server's ``types.NewErr``: a float in an integer field,
    say): present for ``has()``, an error for anything a rule does with it."""

    def __init__(self, why: str) -> None:
        self.why = why

    def _refuse(self, *_: Any) -> Any:
        raise TypeError(self.why)

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"InvalidData({self.why!r})"


def to_cel(schema: dict[str, Any] | None, value: Any) -> Any:
    """``value`` as the CEL value the server builds from it (``UnstructuredToVal``): typed
    by the schema, with :class:`InvalidData` where the server's conversion fails."""
    schema = schema if isinstance(schema, dict) else {}
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, str):
            return celtypes.StringType(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return celtypes.IntType(value)
        return InvalidData("invalid data, expected XIntOrString value to be either a string "
                           "or integer")
    kind = schema.get("type")
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return celtypes.IntType(value)
        return InvalidData(f"invalid data, expected int, got {type(value).__name__}")
    if kind == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return celtypes.DoubleType(value)
        return InvalidData(f"invalid data, expected float, got {type(value).__name__}")
    if kind == "object" and isinstance(value, dict) and (
            "properties" in schema or isinstance(schema.get("additionalProperties"), dict)):
        return celtypes.MapType({celtypes.StringType(k): to_cel(_field_schema(schema, k), v)
                                 for k, v in value.items()})
    if kind == "array" and isinstance(value, list):
        return celtypes.ListType([to_cel(schema.get("items"), v) for v in value])
    try:
        return celpy.json_to_cel(value)
    except (TypeError, ValueError) as exc:
        return InvalidData(str(exc))


def _cel_problems(schema: dict[str, Any], value: Any, path: tuple) -> Iterator[Problem]:
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = _cel_program(rule["rule"]).evaluate({"self": to_cel(schema, value)})
        except Exception as exc:  # a rule that cannot evaluate is a failed rule
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
            if name in value and name != "status":  # dropped on create and apply
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
    obj, unsendable = json_value(obj)
    if unsendable:  # kubectl cannot even send it
        return unsendable
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    if not kind:
        return [Problem(("kind",), "Required value: every object needs a kind")]
    schemas = load_crds()
    if not isinstance(kind, str) or kind not in schemas:
        known = ", ".join(sorted(schemas))
        return [Problem(("kind",), f'unknown kind "{kind}" (Trellis kinds: {known})')]
    if api_version != api.API_VERSION:
        return [Problem(("apiVersion",),
                        f'Unsupported value: "{api_version}": expected "{api.API_VERSION}"')]
    schema = schemas[kind]
    problems = [Problem(path, message)
                for path, message in objectmeta.problems(obj.get("metadata"))]
    body = prune_nulls(_spec_schema(kind), {k: v for k, v in obj.items() if k != "status"})
    structural = list(_schema_problems(kind, body))
    structural += unknown_fields(schema["properties"].get("status"), obj.get("status"),
                                 ("status",))
    problems += structural
    if not problems:  # as the server: rules run only on an otherwise valid object
        problems += list(_cel_problems(_spec_schema(kind), apply_defaults(schema, body), ()))
    return problems


def with_defaults(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the API server would store it (null fields pruned, defaults applied)."""
    schema = load_crds()[obj["kind"]]
    return apply_defaults(schema, prune_nulls(schema, obj))


def spec_section(kind: str, name: str, value: dict[str, Any] | None) -> dict[str, Any]:
    """``spec.<name>`` with the CRD's defaults filled in, so decision code reads every
    default from the schema instead of restating it."""
    section = load_crds()[kind]["properties"]["spec"]["properties"][name]
    return apply_defaults(section, prune_nulls(section, dict(value or {})))


@functools.cache
def _section_validator(kind: str, name: str) -> Any:
    return _Validator(to_jsonschema(load_crds()[kind]["properties"]["spec"]["properties"][name]))


def section_problems(kind: str, name: str, value: Any) -> list[Problem]:
    """What the CRD says about ``spec.<name>`` alone (OpenAPI, then its CEL rules): the
    operator re-checks a stored object's section with the rules that admitted it (an
    object stored under an older CRD is judged by today's)."""
    section = load_crds()[kind]["properties"]["spec"]["properties"][name]
    path: tuple[str | int, ...] = ("spec", name)
    value, unsendable = json_value(value, path)
    if unsendable:
        return unsendable
    value = prune_nulls(section, value)
    problems = [Problem((*path, *err.absolute_path), _friendly(err))
                for err in _section_validator(kind, name).iter_errors(value)]
    if not problems:
        problems = list(_cel_problems(section, apply_defaults(section, value), path))
    return problems
