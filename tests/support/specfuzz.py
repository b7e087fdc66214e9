"""Spec fuzzing: generated documents judged by the API server and by ``trellis validate``.

Documents come from Hypothesis strategies derived from the CRDs in ``crds/``: each
property's type, enum, range, length, pattern and required-ness is read from the schema;
the CEL rules' constraints (which cannot be inverted automatically) are stated per field
below. A case is a valid document plus zero to three breakages: a wrong type, a missing
or ``null`` field, a number out of range or a float where an integer belongs, a string
too long or off its pattern, a resource quantity near its bounds or misspelt, an enum
miss, an unknown field, a bad name, a broken CEL constraint, bad metadata (labels,
annotations, finalizers), a status, YAML keys that are not strings, NaN, a wrong kind or
apiVersion.

Each case is written as the YAML file a user would have. ``trellis validate`` reads that
file, and the API server judges it twice, each a dry-run create with strict field
validation: through ``kubectl create --dry-run=server -f DIR`` (kubectl's own YAML
reading; one kubectl for all files, its errors name the file), and as the JSON the
SpecRepository sync would send for it (the file read by ``controller.specfiles``, posted
many at a time on a few connections). All three verdicts (accepted or refused) must
agree on every case. The documented exceptions, where ``trellis validate`` is stricter:
``spec.parameters`` (see ``controller/schema.py``) and a key written twice (see
``controller/specfiles.py``).

``tests/integration/test_spec_fuzz.py`` runs a fixed-seed slice; ``bench/fuzz_bench.py``
the full run.
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import queue
import re
import ssl
import string
import subprocess
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from controller import api, schema, specfiles
from controller.devcluster.cluster import DevCluster
from controller.paths import ROOT

NAMESPACE = "trellis-spec-fuzz"
KINDS = tuple(k.kind for k in api.KINDS)
DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?"
IDENTIFIER = r"[a-z_][a-z0-9_]{0,12}"
PARAMETER_EXCEPTION = ("parameter names must be lower-case identifiers",
                       "parameter values must be scalars")

Path_ = tuple[str | int, ...]


# ------------------------------------------------------------------------ schema walk
def crd(kind: str) -> dict[str, Any]:
    return schema.load_crds()[kind]


def subschema(kind: str, path: Path_) -> dict[str, Any] | None:
    """The schema of ``path`` (None where the schema declares nothing)."""
    node: dict[str, Any] | None = crd(kind)
    for part in path:
        if node is None:
            return None
        if isinstance(part, int):
            node = node.get("items") if isinstance(node.get("items"), dict) else None
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def declared(kind: str, under: Path_ = ("spec",)) -> list[tuple[Path_, dict[str, Any]]]:
    """Every field the schema declares below ``under`` (list items as index 0)."""
    out: list[tuple[Path_, dict[str, Any]]] = []

    def walk(node: dict[str, Any], path: Path_) -> None:
        out.append((path, node))
        for name, sub in node.get("properties", {}).items():
            walk(sub, (*path, name))
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*path, 0))

    start = subschema(kind, under)
    assert start is not None
    walk(start, under)
    return out


# ----------------------------------------------------------------- valid documents
SCALARS = st.one_of(
    st.integers(-1000, 10**6), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.booleans(), st.text(string.ascii_letters + string.digits + "-_. /", max_size=12),
)
SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=24)


def _steps() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(1, 99), max_size=5, unique=True).map(
        lambda xs: [*sorted(xs), 100])


def _drift(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("minSamples", 0) > value.get("window", 500):
        value["minSamples"], value["window"] = value.get("window", 500), value["minSamples"]
    if value.get("action") == "retrain":
        value["enabled"] = True
    return value


def _ref() -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        st.builds(lambda b: {"branch": b}, st.from_regex(r"[a-z][a-z0-9/._-]{0,20}",
                                                         fullmatch=True)),
        st.builds(lambda t: {"tag": t}, st.from_regex(r"v[0-9]{1,2}\.[0-9]{1,2}",
                                                      fullmatch=True)),
        st.builds(lambda c: {"commit": c}, st.from_regex(r"[0-9a-f]{7,40}", fullmatch=True)),
    )


def _cpu() -> st.SearchStrategy[int | str]:
    """Valid cpu: whole cores, or 1m..256 cores written in one of the quantity forms."""
    def render(millicores: int, form: str) -> str:
        cores = Decimal(millicores) / 1000
        return {"m": f"{millicores}m", "cores": format(cores, "f"),
                "u": f"{millicores * 1000}u", "n": f"{millicores * 10**6}n",
                "e": f"{millicores}.0e-3", "k": format(cores / 1000, "f") + "k"}[form]
    return st.one_of(st.integers(1, 256), st.builds(
        render, st.one_of(st.integers(1, 256_000), st.sampled_from([1, 1000, 256_000])),
        st.sampled_from(["m", "cores", "u", "n", "e", "k"])))


def _memory() -> st.SearchStrategy[int | str]:
    """Valid memory: whole MiB, or 128Mi..1Ti as a count of a binary or decimal unit (or a
    decimal fraction of one), bounds included. (Exponent forms carry a dot: PyYAML then
    quotes them, where kubectl would read a plain ``134e+6`` as a number.)"""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "": 1, "e+6": 10**6, "E+9": 10**9}
    low, high = 128 * 2**20, 2**40

    def render(unit: str, share: float, tenths: bool) -> str:
        size = units[unit]
        scale = 10 if tenths else 1
        count = math.ceil(low * scale / size) + int(share * (high * scale // size
                                                            - math.ceil(low * scale / size)))
        number = format(Decimal(count) / scale, "f")
        if unit[:1] in "eE" and "." not in number:
            number += ".0"  # 134e+6 written plain is a float to kubectl; 134.0e+6 is quoted
        return number + unit
    return st.one_of(st.integers(128, 2**20), st.builds(
        render, st.sampled_from(sorted(units)),
        st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0])), st.booleans()))


# Quantities near the bounds and in odd spellings, valid or not (the "quantity" breakage).
QUANTITY_EDGES = {
    "cpu": ["1m", "0.001", "999999n", "0.0009", "256", "256000m", "256001m", "0", "-1",
            "1e3", "1e100", "1e1.5", "2K", "2ki", "500 m", ".5m", "1.", "+1", "0x1", "1_000m",
            "Infinity", "NaN", "", "m", 0, 257, 256, "1000000001n", "1\n"],
    "memory": ["128Mi", "134217728", "134217727", "127.99999Mi", "0.125Gi", "1Ti", "1Ti ",
               "1099511627776", "1099511627777", "1.0000000001Ti", "1024Gi", "1100G",
               "4GB", "4gi", "4G i", "-4Gi", "2048", "1Pi", "8Ei", "9Ei", "1e15", "0.1e10",
               "1.e+9", 127, 128, 1048576, 1048577, "4Mi\n", ""],
}

# Fields whose valid values a CEL rule constrains: (kind, path) -> strategy.
OVERRIDES: dict[tuple[str, Path_], Callable[[], st.SearchStrategy[Any]]] = {
    ("Experiment", ("spec", "flow", "file")): lambda: st.from_regex(
        r"(flows/)?[a-z][a-z0-9_]{0,16}\.py", fullmatch=True),
    ("Experiment", ("spec", "parameters")): lambda: st.dictionaries(
        st.from_regex(IDENTIFIER, fullmatch=True), SCALARS, max_size=4),
    ("Experiment", ("spec", "resources", "cpu")): _cpu,
    ("Experiment", ("spec", "resources", "memory")): _memory,
    ("ModelDeployment", ("spec", "model", "version")): lambda: st.one_of(
        st.integers(1, 10**6), st.just("latest")),
    ("ModelDeployment", ("spec", "canary", "steps")): _steps,
    ("SpecRepository", ("spec", "url")): lambda: st.builds(
        "{}{}".format,
        st.sampled_from(["https://", "http://", "ssh://", "git@", "file://", "/"]),
        st.from_regex(r"[a-z0-9][a-z0-9./:_-]{0,30}", fullmatch=True)),
    ("SpecRepository", ("spec", "ref")): _ref,
    ("SpecRepository", ("spec", "path")): lambda: st.from_regex(
        r"\.|[a-z][a-z0-9_-]{0,10}(/[a-z][a-z0-9_-]{0,10}){0,2}", fullmatch=True),
}
# Object-level CEL rules: (kind, path) -> a repair applied to generated values.
REPAIRS: dict[tuple[str, Path_], Callable[[Any], Any]] = {
    ("ModelDeployment", ("spec", "drift")): _drift,
    ("ModelDeployment", ("spec",)): lambda spec: (
        {**spec, "drift": _drift(dict(spec["drift"]))} if isinstance(spec.get("drift"), dict)
        else spec),
}


def from_schema(kind: str, node: dict[str, Any], path: Path_,
                full: bool = False) -> st.SearchStrategy[Any]:
    """Valid values of one schema node (type, enum, bounds, lengths, pattern, required);
    ``full``: every optional property too (Hypothesis alone leans towards leaving them
    out)."""
    if (kind, path) in OVERRIDES:
        strategy = OVERRIDES[(kind, path)]()
    elif "enum" in node:
        strategy = st.sampled_from(node["enum"])
    elif node.get("x-kubernetes-int-or-string"):
        strategy = st.one_of(st.integers(0, 100), SAFE_TEXT)
    elif node.get("type") == "object" and "properties" in node:
        required = set(node["properties"] if full else node.get("required", []))
        props = {k: from_schema(kind, v, (*path, k), full)
                 for k, v in node["properties"].items()}
        strategy = st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required})
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        strategy = st.dictionaries(st.from_regex(IDENTIFIER, fullmatch=True),
                                   from_schema(kind, node["additionalProperties"], (*path, "*")),
                                   max_size=min(4, node.get("maxProperties", 4)))
    elif node.get("type") == "object":
        strategy = st.just({})
    elif node.get("type") == "array":
        strategy = st.lists(from_schema(kind, node["items"], (*path, 0)),
                            min_size=node.get("minItems", 0),
                            max_size=min(node.get("maxItems", 5), 5))
    elif node.get("type") == "integer":
        strategy = st.integers(node.get("minimum", -(2**31)), node.get("maximum", 2**31))
    elif node.get("type") == "number":
        low, high = node.get("minimum"), node.get("maximum")
        floats = st.floats(low, high, allow_nan=False, allow_infinity=False,
                           exclude_min=bool(node.get("exclusiveMinimum")) and low is not None,
                           exclude_max=bool(node.get("exclusiveMaximum")) and high is not None)
        ints = st.integers(math.ceil(low) if low is not None else -1000,
                           math.floor(high) if high is not None else 10**6).filter(
            lambda v: (not node.get("exclusiveMinimum") or v != low)
            and (not node.get("exclusiveMaximum") or v != high))
        strategy = st.one_of(floats, ints)
    elif node.get("type") == "boolean":
        strategy = st.booleans()
    elif node.get("type") == "string":
        low, high = node.get("minLength", 0), min(node.get("maxLength", 40), 40)
        if "pattern" in node:
            strategy = st.from_regex(node["pattern"], fullmatch=True).filter(
                lambda s: low <= len(s) <= node.get("maxLength", 10**9))
        else:
            strategy = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]),
                               min_size=max(low, 0), max_size=max(high, low))
    elif node.get("x-kubernetes-preserve-unknown-fields"):
        strategy = SCALARS
    else:
        strategy = st.nothing()
    repair = REPAIRS.get((kind, path))
    return strategy.map(repair) if repair else strategy


def valid_metadata(full: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    label_key = st.one_of(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
                          st.from_regex(r"example\.com/[A-Za-z][-A-Za-z0-9_.]{0,10}[a-z]",
                                        fullmatch=True))
    label_value = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?",
                                fullmatch=True)
    optional = {
        "namespace": st.just(NAMESPACE),
        "labels": st.dictionaries(label_key, label_value, max_size=3),
        "annotations": st.dictionaries(label_key, SAFE_TEXT, max_size=3),
    }
    name = {"name": st.from_regex(DNS_LABEL, fullmatch=True)}
    if full:
        return st.fixed_dictionaries({**name, **optional})
    return st.fixed_dictionaries(name, optional=optional)


@functools.cache
def valid_document(kind: str, full: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    spec = from_schema(kind, crd(kind)["properties"]["spec"], ("spec",), full)
    return st.fixed_dictionaries({
        "apiVersion": st.just(api.API_VERSION), "kind": st.just(kind),
        "metadata": valid_metadata(full), "spec": spec,
    })


# -------------------------------------------------------------------------- breakage
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40),
              st.floats(allow_nan=False, allow_infinity=False), SAFE_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(string.ascii_letters, max_size=6), inner,
                                            max_size=3)),
    max_leaves=6,
)
BAD_NAMES = ["Classifier", "my_model", "a.b", "a" * 64, "x" * 254, "", "-lead", "trail-",
             "name\n", "ünï", "with space", "123", "a" * 63, "dots.in.name", "UPPER-case",
             "\tname", "name/sub"]
BAD_LABEL_KEYS = ["a b", "-x", "x-", "a/b/c", "/x", "Example.com/x", "x" * 64, "é", ""]
BAD_LABEL_VALUES = ["a b", "-x", "x" * 64, "é", "x-", "a\n"]
# Plain scalars that YAML readers disagree on (PyYAML's YAML 1.1 against kubectl's go-yaml).
SPELLINGS = ["y", "n", "Y", "yes", "No", "on", "OFF", "~", "1e3", "1.0e3", "1e-3", ".5", "+1",
             "-0", "0x1f", "0o17", "017", "1_000", "1:30", "2024-01-01", "2024-1-2 3:04:05",
             "100.0", "2.0", "1e400", "0b101", ".inf", ".NaN", "9223372036854775808", "True",
             "tRue", "Null", "1.", "12e", "0x", "1_0.5", "-.5", "0.5e+2", ".5_0",
             "-9223372036854775808.0"]
NUMBER_FORMS = [2.0, 2.5, 1e20, 2**63, 2**63 - 1, 2**53 + 1, -0.0, True, float("nan"),
                float("inf"), 10**400, 0.0, -1, 3.0000001]


def _set(doc: Any, path: Path_, value: Any) -> Any:
    """``doc`` with ``value`` at ``path`` (missing maps created on the way)."""
    if not path:
        return value
    node = doc
    for part in path[:-1]:
        if isinstance(node, dict):
            nxt = node.get(part)
            if not isinstance(nxt, dict | list):
                nxt = node[part] = {}
            node = nxt
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            if not isinstance(node[part], dict | list):
                node[part] = {}
            node = node[part]
        else:
            return doc
    leaf = path[-1]
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(leaf, int)
                                  and leaf < len(node)):
        node[leaf] = value
    return doc


def _delete(doc: Any, path: Path_) -> Any:
    node = doc
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return doc
    if isinstance(node, dict):
        node.pop(path[-1], None)
    return doc


def present_paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key and list index in ``doc``."""
    out: list[Path_] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, key))
            out += present_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.append((*prefix, i))
            out += present_paths(value, (*prefix, i))
    return out


def _rotated(items: list[Any], by: int) -> list[Any]:
    """Hypothesis favours the first of ``sampled_from``; generation rotates the lists."""
    by %= len(items)
    return items[by:] + items[:by]


@st.composite
def breakage(draw: st.DrawFn, kind: str, doc: dict[str, Any],
             rotation: int = 0) -> tuple[str, dict[str, Any]]:
    """One deliberate break of ``doc`` (modified in place); returns its description."""
    fields = declared(kind)
    has = {n.get("type") for _, n in fields} | {k for _, n in fields for k in n}
    what = draw(st.sampled_from(_rotated([
        "wrong-type", "delete", "null", "unknown-field", "bad-name", "cel", "metadata",
        "status", "keys", "type-meta", "length",
        *(["out-of-range", "number-form"] if has & {"integer", "number"} else []),
        *(["enum"] if "enum" in has else []), *(["pattern"] if "pattern" in has else []),
        *(["parameters", "quantity"] if kind == "Experiment" else []), "yaml-spelling",
    ], rotation)))
    paths = [p for p in present_paths(doc) if p[:1] != ("apiVersion",)] or [("spec",)]
    if what == "wrong-type":
        path = draw(st.sampled_from(paths))
        _set(doc, path, draw(ANY_JSON))
    elif what == "delete":
        path = draw(st.sampled_from([p for p in paths if isinstance(p[-1], str)]))
        _delete(doc, path)
    elif what == "null":
        path = draw(st.sampled_from(paths))
        _set(doc, path, None)
    elif what == "out-of-range":
        bounded = [(p, n) for p, n in fields
                   if n.get("type") in ("integer", "number") and ("minimum" in n
                                                                  or "maximum" in n)]
        path, node = draw(st.sampled_from(bounded))
        options = [10**20, -(10**20)]
        if "minimum" in node:
            options += [node["minimum"] - 1, node["minimum"] - 0.5, node["minimum"]]
        if "maximum" in node:
            options += [node["maximum"] + 1, node["maximum"] + 0.25, node["maximum"]]
        _set(doc, path, draw(st.sampled_from(options)))
    elif what == "length":
        sized = [(p, n) for p, n in fields if {"maxLength", "minLength", "maxItems",
                                               "minItems", "maxProperties"} & set(n)]
        path, node = draw(st.sampled_from(sized))
        if "maxLength" in node or "minLength" in node:
            longest = node.get("maxLength", 8)
            char = draw(st.sampled_from(["a", "é", "_", "1"]))
            value = draw(st.sampled_from(["", char * longest, char * (longest + 1),
                                          "x" * (longest - 3) + ".py"]))
        elif "maxProperties" in node:
            n = draw(st.sampled_from([node["maxProperties"], node["maxProperties"] + 1]))
            value = {f"p{i}": i for i in range(n)}
        else:
            n = draw(st.sampled_from([0, node.get("maxItems", 20) + 1]))
            value = [*range(1, n), 100] if n else []
        _set(doc, path, value)
    elif what == "enum":
        path, node = draw(st.sampled_from([(p, n) for p, n in fields if "enum" in n]))
        value = draw(st.sampled_from(node["enum"]))
        _set(doc, path, draw(st.sampled_from([value.upper(), value.capitalize(), value + " ",
                                              "", "other"])))
    elif what == "pattern":
        path, node = draw(st.sampled_from([(p, n) for p, n in fields if "pattern" in n]))
        base = str(draw(from_schema(kind, node, path)))
        bad = draw(st.sampled_from(["\n", " ", "é", "-", ".", "/", "A", "0", "$", "ms"]))
        where = draw(st.sampled_from(["end", "start", "replace"]))
        value = (base + bad if where == "end" else bad + base if where == "start"
                 else bad)
        _set(doc, path, value)
    elif what == "unknown-field":
        objects = [()] + [p for p in paths if isinstance(_get(doc, p), dict)]
        path = draw(st.sampled_from(objects))
        key = draw(st.one_of(st.sampled_from(["replica", "Backend", "gpus", "foo", "status",
                                              "spec", "metadata", "x-extra", "kind"]),
                             st.text(string.ascii_letters, min_size=1, max_size=8)))
        _set(doc, (*path, key), draw(ANY_JSON))
    elif what == "bad-name":
        doc.setdefault("metadata", {})
        _set(doc, ("metadata", "name"), draw(st.sampled_from(BAD_NAMES)))
    elif what == "cel":
        cel_breakage(draw, kind, doc)
    elif what == "number-form":
        numeric = [p for p, n in fields if n.get("type") in ("integer", "number")
                   or n.get("x-kubernetes-int-or-string")]
        _set(doc, draw(st.sampled_from(numeric)), draw(st.sampled_from(NUMBER_FORMS)))
    elif what == "metadata":
        metadata_breakage(draw, doc)
    elif what == "status":
        status = draw(st.one_of(
            st.fixed_dictionaries({}, optional={
                "phase": st.sampled_from(["Pending", "Nope", 5]),
                "observedGeneration": st.integers(-5, 5),
                "conditions": st.lists(st.fixed_dictionaries(
                    {"type": st.just("Ready")}, optional={"status": st.just("True")}),
                    max_size=2),
            }),
            ANY_JSON))
        doc["status"] = status
    elif what == "keys":
        target = draw(st.sampled_from([("metadata", "labels"), ("spec",),
                                       ("spec", "parameters"), ("metadata", "annotations")]))
        key = draw(st.sampled_from([1, 2.5, True, None, 0]))
        _set(doc, (*target, key), draw(st.sampled_from(["x", 1, "a-b"])))
    elif what == "parameters":
        value = draw(st.sampled_from([
            {"Bad-Name": 1}, {"nested": {"a": 1}}, {"listed": [1, 2]}, {"nothing": None},
            {"ok_name": "fine"}, {"CamelCase": True}, {"1st": 1}, {"x": {}},
        ]))
        _set(doc, ("spec", "parameters"), value)
    elif what == "quantity":
        name = draw(st.sampled_from(sorted(QUANTITY_EDGES)))
        _set(doc, ("spec", "resources", name), draw(st.sampled_from(QUANTITY_EDGES[name])))
    elif what == "yaml-spelling":
        scalars = [p for p, n in fields if n.get("type") in ("integer", "number", "string",
                                                             "boolean")
                   or n.get("x-kubernetes-int-or-string")]
        path = draw(st.sampled_from([*scalars, ("metadata", "name"),
                                     ("metadata", "labels", "app"), ("spec", "parameters", "p")]))
        _set(doc, path, Plain(draw(st.sampled_from(SPELLINGS))))
    elif what == "type-meta":
        field_ = draw(st.sampled_from(["apiVersion", "kind"]))
        options = {
            "apiVersion": [None, "mlops.trellis.dev/v1", "v1", "mlops.trellis.dev/v1alpha1 ", 5],
            "kind": [None, kind.lower(), kind + "s", *[k for k in KINDS if k != kind], ""],
        }[field_]
        value = draw(st.sampled_from(options))
        if value is None:
            doc.pop(field_, None)
        else:
            doc[field_] = value
    return what, doc


def _get(doc: Any, path: Path_) -> Any:
    node = doc
    for part in path:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
    return node


def cel_breakage(draw: st.DrawFn, kind: str, doc: dict[str, Any]) -> None:
    """Break what a CEL rule (not the OpenAPI part) enforces."""
    choices: dict[str, list[tuple[Path_, Any]]] = {
        "Experiment": [
            (("spec", "flow", "file"), v) for v in
            ["flows/x.txt", "/abs/flow.py", "../up.py", "a/../b.py", ".py", "flow.py ",
             "flow.PY", "x.py/"]],
        "ModelDeployment": [
            *((("spec", "canary", "steps"), v) for v in
              [[10, 50, 30, 100], [10, 50, 50, 100], [10, 50], [100, 100], [100], [50, 100, 100]]),
            *((("spec", "model", "version"), v) for v in [0, -1, "stable", "Latest", "", "1"]),
            (("spec", "drift"), {"minSamples": 600, "window": 500}),
            (("spec", "drift"), {"minSamples": 600}),
            (("spec", "drift"), {"action": "retrain"}),
            (("spec", "drift"), {"action": "retrain", "enabled": False}),
        ],
        "SpecRepository": [
            *((("spec", "url"), v) for v in ["ftp://x", "example.com/repo.git", "HTTPS://x",
                                              " https://x", "git:x", "file:/x"]),
            *((("spec", "ref"), v) for v in [{}, {"branch": "main", "tag": "v1"},
                                              {"branch": "main", "commit": "abcdef1"},
                                              {"commit": "ABCDEF1"}]),
            *((("spec", "path"), v) for v in ["/etc", "../x", "a/../../b", "..", "a/..b"]),
        ],
    }
    path, value = draw(st.sampled_from(choices[kind]))
    _set(doc, path, value)


def metadata_breakage(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        meta = doc["metadata"] = {"name": "fuzzed"}
    what = draw(st.sampled_from(["label-key", "label-value", "label-type", "annotation-key",
                                 "annotation-type", "annotation-size", "unknown", "namespace",
                                 "finalizer", "not-a-map", "generation"]))
    if what == "label-key":
        meta.setdefault("labels", {})[draw(st.sampled_from(BAD_LABEL_KEYS))] = "v"
    elif what == "label-value":
        meta.setdefault("labels", {})["app"] = draw(st.sampled_from([*BAD_LABEL_VALUES, None]))
    elif what == "label-type":
        meta["labels"] = draw(st.sampled_from([["a"], "a=b", {"a": 1}, {"a": True}, None]))
    elif what == "annotation-key":
        meta.setdefault("annotations", {})[draw(st.sampled_from([*BAD_LABEL_KEYS[:-2],
                                                                 "Upper/Case"]))] = "v"
    elif what == "annotation-type":
        meta["annotations"] = draw(st.sampled_from([{"a": 1}, ["x"], {"a": None},
                                                    {"a": {"b": "c"}}]))
    elif what == "annotation-size":
        size = draw(st.sampled_from([256 * 1024 - 1, 256 * 1024 + 1]))
        meta["annotations"] = {"a": "x" * (size - 1)}
    elif what == "unknown":
        meta[draw(st.sampled_from(["Name", "label", "foo", "spec"]))] = "x"
    elif what == "namespace":
        meta["namespace"] = draw(st.sampled_from(["Bad_NS", "a" * 64, "", "ns.dot", 5]))
    elif what == "finalizer":
        meta["finalizers"] = draw(st.sampled_from([["example.com/x"], ["bad finalizer"],
                                                   ["plain"], ["a/b/c"], "x", [1]]))
    elif what == "generation":
        meta["generation"] = draw(st.sampled_from([-1, 3, 2.0, "3"]))
    else:
        doc["metadata"] = draw(st.sampled_from([["name", "x"], "x", 5]))


@st.composite
def fuzz_case(draw: st.DrawFn, n: int, rotation: int) -> tuple[str, Any, tuple[str, ...]]:
    kind = draw(st.sampled_from(_rotated(list(KINDS), rotation)))
    doc = draw(valid_document(kind, full=draw(st.booleans())))
    broken = []
    for i in range(n):
        what, doc = draw(breakage(kind, doc, rotation * 7 + i * 3))
        broken.append(what)
    return kind, doc, tuple(broken)


# ----------------------------------------------------------------------------- cases
class Plain(str):
    """A scalar written plain (unquoted) whatever a YAML reader may make of it."""


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


def _plain(dumper: Any, value: Plain) -> Any:
    # The tag PyYAML itself would resolve the text to: the emitter then writes it plain.
    tag = yaml.SafeDumper.resolve(dumper, yaml.ScalarNode, str(value), (True, False))
    return dumper.represent_scalar(tag, str(value), style="")


_Dumper.add_representer(Plain, _plain)
_DUMPER = _Dumper

@dataclass
class Case:
    index: int
    kind: str
    doc: Any
    breakages: tuple[str, ...]
    text: bytes = b""
    sent: bytes | None = b""

    def __post_init__(self) -> None:
        self.text = yaml.dump(self.doc, Dumper=_DUMPER, sort_keys=False,
                              allow_unicode=True).encode()
        # What the SpecRepository sync sends for the file (NaN stays NaN: not JSON).
        docs, _ = specfiles.parse_bytes(Path(self.filename), self.text)
        self.sent = json.dumps(docs[0].obj, default=str).encode() if docs else None

    @property
    def namespace(self) -> Any:
        meta = self.doc.get("metadata") if isinstance(self.doc, dict) else None
        return meta.get("namespace") if isinstance(meta, dict) else None

    @property
    def filename(self) -> str:
        return f"case-{self.index:05d}.yaml"

    def plural(self) -> str:
        """The resource kubectl would send it to: its own kind's, else the intended one."""
        kind = self.doc.get("kind") if isinstance(self.doc, dict) else None
        target = api.KINDS_BY_NAME.get(kind) if isinstance(kind, str) else None
        return (target or api.KINDS_BY_NAME[self.kind]).plural


# How many breakages a case gets, as shares of all cases (Hypothesis itself leans hard
# towards the simplest draw, which would leave most cases unbroken).
MIX = ((0, 0.3), (1, 0.4), (2, 0.2), (3, 0.1))
CHUNK = 10  # cases per Hypothesis run (each run rotates the choices)


def generate(count: int, seed: int) -> list[Case]:
    """``count`` cases drawn by Hypothesis from a fixed seed (reproducible)."""
    drawn: list[tuple[str, Any, tuple[str, ...]]] = []
    for n, share in MIX:
        want = len(drawn) + (round(count * share) if n != MIX[-1][0] else count - len(drawn))
        round_ = 0
        while len(drawn) < want:
            @settings(max_examples=min(CHUNK, want - len(drawn)), database=None,
                      deadline=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @hypothesis_seed(seed * 100_000 + n * 10_000 + round_)
            @given(fuzz_case(n, round_))
            def collect(case: tuple[str, Any, tuple[str, ...]]) -> None:
                drawn.append(case)

            collect()
            round_ += 1
        del drawn[want:]
    return [Case(i, kind, doc, broken) for i, (kind, doc, broken) in enumerate(drawn)]


@st.composite
def quantity_case(draw: st.DrawFn, rotation: int) -> tuple[str, Any, tuple[str, ...]]:
    """An Experiment whose cpu or memory is a generated quantity, an edge, a misspelling, a
    number form or a plain YAML spelling (the slice ``generate_quantities`` draws)."""
    doc = draw(valid_document("Experiment", full=True))
    name = draw(st.sampled_from(["cpu", "memory"]))
    path: Path_ = ("spec", "resources", name)
    what = draw(st.sampled_from(_rotated(["valid", "quantity", "pattern", "number-form",
                                          "yaml-spelling"], rotation)))
    if what == "quantity":
        _set(doc, path, draw(st.sampled_from(QUANTITY_EDGES[name])))
    elif what == "pattern":
        value = str(_get(doc, path))
        bad = draw(st.sampled_from([" ", "i", "B", "K", "e", ".", "-", "1", "\n", "m"]))
        _set(doc, path, draw(st.sampled_from([value + bad, bad + value, value[:-1]])))
    elif what == "number-form":
        _set(doc, path, draw(st.sampled_from([*NUMBER_FORMS, 0.5, 128.0, 2048.0, 1e3])))
    elif what == "yaml-spelling":
        _set(doc, path, Plain(draw(st.sampled_from(
            [*SPELLINGS, "1e3", "1.5e+9", "500e-3", "0x100", "2_048", "4Gi", "0.5"]))))
    return "Experiment", doc, (f"resources-{what}",)


def generate_quantities(count: int, seed: int) -> list[Case]:
    """``count`` Experiments about ``spec.resources`` quantities, from a fixed seed."""
    drawn: list[tuple[str, Any, tuple[str, ...]]] = []
    round_ = 0
    while len(drawn) < count:
        @settings(max_examples=min(CHUNK, count - len(drawn)), database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @hypothesis_seed(seed * 100_000 + round_)
        @given(quantity_case(round_))
        def collect(case: tuple[str, Any, tuple[str, ...]]) -> None:
            drawn.append(case)

        collect()
        round_ += 1
    return [Case(i, kind, doc, broken) for i, (kind, doc, broken) in enumerate(drawn[:count])]


# ---------------------------------------------------------------------------- judges
@dataclass
class Verdict:
    accepted: bool | None  # None: no verdict (a traceback, a server error)
    detail: str = ""
    status: int | None = None


def offline_verdict(case: Case, directory: Path) -> Verdict:
    """``trellis validate`` on the case's file, in process (a raise is a traceback)."""
    from controller.validate import validate_paths

    path = directory / case.filename
    path.write_bytes(case.text)
    try:
        report = validate_paths([path])
    except Exception:
        return Verdict(None, traceback.format_exc())
    return Verdict(report.ok, report.text())


def cli_verdicts(cases: list[Case], directory: Path) -> tuple[dict[str, Verdict], str]:
    """``trellis validate --format json DIR`` once over every case file; verdicts by file
    (names repeat across cases, so the cross-file duplicate-name errors are left out)."""
    for case in cases:
        (directory / case.filename).write_bytes(case.text)
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "validate", "--format", "json", str(directory)],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    if proc.returncode not in (0, 1) or "Traceback" in proc.stderr:
        return {}, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    errors: dict[str, list[str]] = {}
    for error in json.loads(proc.stdout)["errors"]:
        if error["message"].startswith("duplicate ") and " in namespace " in error["message"]:
            continue
        errors.setdefault(Path(error["path"]).name, []).append(error["message"])
    return {c.filename: Verdict(c.filename not in errors,
                                "\n".join(errors.get(c.filename, [])))
            for c in cases}, ""


class ApiServer:
    """Dry-run creates with strict field validation, on a few keep-alive connections."""

    def __init__(self, dev: DevCluster, namespace: str = NAMESPACE, workers: int = 6) -> None:
        st_ = dev.state()
        assert st_ is not None, "the dev cluster is not running"
        pki = dev.dir / "pki"
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.host, self.port = st_.host, st_.apiserver_port
        self.dev, self.namespace, self.workers = dev, namespace, workers
        dev.kubectl("create", "namespace", namespace, check=False)

    def _post(self, conn: http.client.HTTPSConnection, case: Case) -> Verdict:
        if case.sent is None:  # nothing the sync could send: it refuses the file
            return Verdict(False, "not readable as a spec file")
        path = (f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{self.namespace}/"
                f"{case.plural()}?dryRun=All&fieldValidation=Strict")
        conn.request("POST", path, body=case.sent,
                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            message = str(json.loads(raw).get("message", ""))
        except (ValueError, AttributeError):
            message = raw[:500].decode(errors="replace")
        if resp.status in (200, 201):
            return Verdict(True, "", resp.status)
        if resp.status in (400, 422):
            return Verdict(False, message, resp.status)
        return Verdict(None, f"HTTP {resp.status}: {message}", resp.status)

    def verdicts(self, cases: list[Case]) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(cases)
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(cases)):
            todo.put(i)

        def work() -> None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                               timeout=60)
            try:
                while True:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        results[i] = self._post(conn, cases[i])
                    except (OSError, http.client.HTTPException) as exc:
                        conn.close()
                        conn = http.client.HTTPSConnection(self.host, self.port,
                                                           context=self.ctx, timeout=60)
                        try:
                            results[i] = self._post(conn, cases[i])
                        except (OSError, http.client.HTTPException):
                            results[i] = Verdict(None, f"no answer: {exc}")
            finally:
                conn.close()

        threads = [threading.Thread(target=work) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r or Verdict(None, "not judged") for r in results]


class Kubectl:
    """``kubectl create --dry-run=server --validate=strict`` over the case files: one run for
    all (kubectl goes on past a failing file, and names the file in its error), each file
    alone where that cannot be told apart (a namespace kubectl refuses names no file)."""

    def __init__(self, dev: DevCluster, namespace: str = NAMESPACE) -> None:
        self.dev, self.namespace = dev, namespace
        self.fallbacks = 0

    def _create(self, *paths: Path) -> subprocess.CompletedProcess[str]:
        args = ["create", "--dry-run=server", "--validate=strict", "-n", self.namespace]
        for path in paths:
            args += ["-f", str(path)]
        return self.dev.kubectl(*args, check=False, timeout=1800)

    def verdicts(self, cases: list[Case], directory: Path) -> list[Verdict]:
        directory.mkdir(parents=True, exist_ok=True)
        for case in cases:
            (directory / case.filename).write_bytes(case.text)
        alone = {c.filename for c in cases
                 if isinstance(c.namespace, str) and c.namespace not in ("", self.namespace)}
        batch = [c for c in cases if c.filename not in alone]
        proc = self._create(directory) if len(alone) == 0 else self._create(
            *(directory / c.filename for c in batch))
        errors: dict[str, str] = {}
        for line in proc.stderr.splitlines():
            for name in set(re.findall(r"case-\d{5}\.yaml", line)):
                errors[name] = errors.get(name, "") + line[:400]
        created = sum(" created" in line for line in proc.stdout.splitlines())
        results: dict[str, Verdict] = {}
        if created + len(errors) == len(batch):
            for c in batch:
                results[c.filename] = Verdict(c.filename not in errors,
                                              errors.get(c.filename, ""))
        else:  # some error named no file: judge every file alone
            alone |= {c.filename for c in batch}
        for name in sorted(alone):
            self.fallbacks += 1
            one = self._create(directory / name)
            results[name] = Verdict(one.returncode == 0, one.stderr.strip()[:800])
        return [results[c.filename] for c in cases]


# ---------------------------------------------------------------------------- results
def parameters_only(detail: str) -> bool:
    """True when every offline error is the documented parameters exception."""
    lines = [line for line in detail.splitlines() if line.strip()]
    return bool(lines) and all(any(p in line for p in PARAMETER_EXCEPTION) for line in lines)


def duplicates_only(detail: str) -> bool:
    """True when every offline error is a key written twice (the servers keep the last)."""
    lines = [line for line in detail.splitlines() if line.strip()]
    return bool(lines) and all("duplicate key" in line for line in lines)


def unsendable_only(detail: str) -> bool:
    """True when every offline error is a key kubectl cannot send (a null key): the sync
    refuses it as kubectl does, though the server would take the JSON ``"null"``."""
    lines = [line for line in detail.splitlines() if line.strip()]
    return bool(lines) and all("kubectl cannot send it" in line for line in lines)


@dataclass
class Outcome:
    cases: int = 0
    accepted: int = 0
    rejected: int = 0
    disagreements: list[str] = field(default_factory=list)  # validate vs kubectl
    sync_disagreements: list[str] = field(default_factory=list)  # validate vs the sync's JSON
    tracebacks: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    parameter_exceptions: int = 0
    duplicate_exceptions: int = 0
    kubectl_fallbacks: int = 0
    breakages: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {"cases": self.cases, "accepted": self.accepted, "rejected": self.rejected,
                "disagreements": len(self.disagreements),
                "sync_disagreements": len(self.sync_disagreements),
                "tracebacks": len(self.tracebacks), "server_errors": len(self.server_errors),
                "parameter_exceptions": self.parameter_exceptions,
                "duplicate_exceptions": self.duplicate_exceptions,
                "kubectl_fallbacks": self.kubectl_fallbacks,
                "breakages": dict(self.breakages)}


def describe(case: Case, offline: Verdict, server: Verdict, judge: str) -> str:
    return (f"case {case.index} ({case.kind}; {', '.join(case.breakages) or 'valid'}): "
            f"trellis validate {'accepts' if offline.accepted else 'refuses'}, "
            f"{judge} {'accepts' if server.accepted else 'refuses'}\n"
            f"--- file\n{case.text.decode(errors='replace')[:2000]}"
            f"--- validate: {offline.detail[:800]}\n--- {judge}: {server.detail[:800]}")


def _exception(out: Outcome, offline: Verdict, server: Verdict) -> bool:
    """A documented case where trellis validate is stricter than the server (counted)."""
    if server.accepted and parameters_only(offline.detail):
        out.parameter_exceptions += 1
        return True
    if server.accepted and duplicates_only(offline.detail):
        out.duplicate_exceptions += 1
        return True
    return False


def run(cases: list[Case], server: ApiServer, directory: Path, cli: bool = True,
        kubectl: Kubectl | None = None) -> Outcome:
    directory.mkdir(parents=True, exist_ok=True)
    out = Outcome(cases=len(cases))
    kubectl = kubectl or Kubectl(server.dev)
    server_verdicts = server.verdicts(cases)
    kubectl_verdicts = kubectl.verdicts(cases, directory / "kubectl")
    out.kubectl_fallbacks = kubectl.fallbacks
    (directory / "cli").mkdir(exist_ok=True)
    cli_results, cli_failure = cli_verdicts(cases, directory / "cli") if cli else ({}, "")
    if cli_failure:
        out.tracebacks.append(f"trellis validate (CLI) failed: {cli_failure}")
    for case, srv, kub in zip(cases, server_verdicts, kubectl_verdicts, strict=True):
        out.breakages.update(case.breakages or ("valid",))
        offline = offline_verdict(case, directory)
        if offline.accepted is None:
            out.tracebacks.append(f"case {case.index}: {offline.detail}")
            continue
        if srv.accepted is None:
            out.server_errors.append(f"case {case.index}: {srv.detail}")
            continue
        via_cli = cli_results.get(case.filename)
        if via_cli is not None and via_cli.accepted != offline.accepted:
            out.disagreements.append("CLI and in-process validate differ: "
                                     + describe(case, via_cli, offline, "CLI"))
        if kub.accepted:
            out.accepted += 1
        else:
            out.rejected += 1
        if offline.accepted != kub.accepted and not _exception(out, offline, kub):
            out.disagreements.append(describe(case, offline, kub, "kubectl"))
        if offline.accepted != srv.accepted and not (
                srv.accepted and (parameters_only(offline.detail)
                                  or duplicates_only(offline.detail)
                                  or unsendable_only(offline.detail))):
            out.sync_disagreements.append(describe(case, offline, srv, "the sync's JSON"))
    return out
