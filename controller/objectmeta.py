"""``metadata`` as the API server reads it: ObjectMeta's fields, types and rules.

A CRD's schema says only ``metadata: {type: object}``; the server decodes the field
strictly into Kubernetes' ObjectMeta (unknown fields and wrong types are refused) and then
checks names, labels, annotations and finalizers with apimachinery's rules. This module
restates those rules (``k8s.io/apimachinery/pkg/api/validation`` and
``pkg/util/validation`` at v0.34) so ``trellis validate`` refuses what the server refuses.

Lengths are in bytes where Go's ``len`` counts bytes (label and annotation rules); the
regular expressions are matched whole (``fullmatch``), as Go's anchored patterns are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
NAME_MAX = 63  # Trellis names: a DNS label (the CRDs' root rule), not the server's subdomain
SUBDOMAIN_MAX = 253
ANNOTATIONS_MAX_BYTES = 256 * 1024

# ObjectMeta's JSON fields and how each decodes ("str", "int", "time", "strmap",
# "strlist", "list"); anything else in metadata is an unknown field.
FIELDS = {
    "name": "str", "generateName": "str", "namespace": "str", "selfLink": "str",
    "uid": "str", "resourceVersion": "str", "generation": "int",
    "creationTimestamp": "time", "deletionTimestamp": "time",
    "deletionGracePeriodSeconds": "int", "labels": "strmap", "annotations": "strmap",
    "ownerReferences": "list", "finalizers": "strlist", "managedFields": "list",
}

Found = tuple[tuple[str | int, ...], str]  # (field path, message)


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def is_dns1123_subdomain(value: str) -> list[str]:
    if _nbytes(value) > SUBDOMAIN_MAX:
        return [f"must be no more than {SUBDOMAIN_MAX} characters"]
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        return ["a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character"]
    return []


def is_qualified_name(value: str) -> list[str]:
    """apimachinery's IsQualifiedName: ``[prefix/]name`` (label keys, annotation keys,
    finalizers)."""
    parts = value.split("/")
    errors: list[str] = []
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += [f"prefix part {m}" for m in is_dns1123_subdomain(prefix)]
    else:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', "
                "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errors.append("name part must be non-empty")
    elif _nbytes(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if not QUALIFIED_NAME.fullmatch(name):
        errors.append("name part must consist of alphanumeric characters, '-', '_' or '.', "
                      "and must start and end with an alphanumeric character")
    return errors


def is_label_value(value: str) -> list[str]:
    errors = []
    if _nbytes(value) > 63:
        errors.append("must be no more than 63 characters")
    if not LABEL_VALUE.fullmatch(value):
        errors.append("a valid label must be an empty string or consist of alphanumeric "
                      "characters, '-', '_' or '.', and must start and end with an "
                      "alphanumeric character")
    return errors


def _is_time(value: str) -> bool:
    if not RFC3339.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _int64(value: Any) -> bool:
    """Decodes into an int64: an int in range, or a float the server re-encodes as one
    (Go prints 2.0 as ``2``, but 1e21 and beyond with an exponent)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _decode(key: str, how: str, value: Any) -> str | None:
    """Why ``value`` does not decode into ObjectMeta's field ``key`` (None: it does)."""
    if value is None:  # JSON null leaves a Go field at its zero value
        return None
    if how == "str" and not isinstance(value, str):
        return f"must be a string, not {_json_type(value)}"
    if how == "int" and not _int64(value):
        return f"must be an integer (int64), not {value!r}"
    if how == "time" and not (isinstance(value, str) and _is_time(value)):
        return f"must be an RFC 3339 date-time string, got {value!r}"
    if how == "strmap":
        if not isinstance(value, dict):
            return f"must be a map of strings, not {_json_type(value)}"
        bad = [k for k, v in value.items() if v is not None and not isinstance(v, str)]
        if bad:
            return f"values must be strings: {bad[0]!r} is {_json_type(value[bad[0]])}"
    if how == "strlist" and not (isinstance(value, list)
                                 and all(isinstance(v, str) for v in value)):
        return "must be a list of strings"
    if how == "list" and not isinstance(value, list):
        return f"must be a list, not {_json_type(value)}"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a map" if isinstance(value, dict) else type(value).__name__


def problems(meta: Any) -> Iterator[Found]:
    """What the API server refuses in ``metadata`` of a Trellis object (namespaced)."""
    if meta is None:
        yield ("metadata",), "Required value: metadata with a name"
        return
    if not isinstance(meta, dict):
        yield ("metadata",), f"Invalid value: must be a map (ObjectMeta), not {_json_type(meta)}"
        return
    decoded = True
    for key, value in meta.items():
        how = FIELDS.get(key)
        if how is None:
            yield ("metadata", key), "unknown field"
            decoded = False
            continue
        why = _decode(key, how, value)
        if why:
            yield ("metadata", key), f"Invalid value: {why}"
            decoded = False
    if not decoded:  # the server stops at decoding; so do we
        return
    name = meta.get("name") or ""
    if not name:
        yield ("metadata", "name"), "Required value: name is required"
    elif _nbytes(name) > NAME_MAX or not DNS1123_LABEL.fullmatch(name):
        yield ("metadata", "name"), (
            f'Invalid value: "{name}": must be a DNS label (lower-case letters, digits and '
            f"'-', at most {NAME_MAX} characters)")
    generate = meta.get("generateName") or ""
    masked = generate[:-1] + "a" if len(generate) > 1 and generate.endswith("-") else generate
    if generate and is_dns1123_subdomain(masked):
        yield ("metadata", "generateName"), f'Invalid value: "{generate}": not a DNS subdomain'
    namespace = meta.get("namespace") or ""
    if namespace and (_nbytes(namespace) > NAME_MAX or not DNS1123_LABEL.fullmatch(namespace)):
        yield ("metadata", "namespace"), f'Invalid value: "{namespace}": must be a DNS label'
    # generation, uid, creationTimestamp...: set by the server on create and update; a
    # value here only has to decode.
    for key, value in (meta.get("labels") or {}).items():
        for msg in is_qualified_name(key):
            yield ("metadata", "labels", key), f'Invalid value: "{key}": {msg}'
        for msg in is_label_value(value or ""):
            yield ("metadata", "labels", key), f'Invalid value: "{value}": {msg}'
    annotations = meta.get("annotations") or {}
    for key in annotations:
        for msg in is_qualified_name(key.lower()):
            yield ("metadata", "annotations", key), f'Invalid value: "{key}": {msg}'
    size = sum(_nbytes(k) + _nbytes(v or "") for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        yield ("metadata", "annotations"), (
            f"Too long: annotations may not be more than {ANNOTATIONS_MAX_BYTES} bytes "
            f"in all (these are {size})")
    for i, finalizer in enumerate(meta.get("finalizers") or []):
        for msg in is_qualified_name(finalizer):
            yield ("metadata", "finalizers", i), f'Invalid value: "{finalizer}": {msg}'
