"""Read a Metaflow flow file without running it: its FlowSpec classes and Parameters.

The operator and ``trellis validate`` must judge flow files from pull requests, so this
module only parses (``ast``) and never imports or executes them. It understands the
usual spellings: ``from metaflow import FlowSpec, Parameter`` (aliases included),
``import metaflow`` / ``metaflow.Parameter``, and subclasses of FlowSpec subclasses
defined in the same file (their Parameters are inherited).
"""

from __future__ import annotations

import ast
import functools
import json
import threading
from dataclasses import dataclass, field

# The type names check_parameters() understands; anything else is not checked.
KNOWN_TYPES = ("int", "float", "str", "bool", "json")


class FlowInspectError(ValueError):
    """The file cannot be read as a flow (syntax error, or the class is no FlowSpec)."""


@dataclass(frozen=True)
class ParamSpec:
    """One ``Parameter(...)`` declaration, as far as it can be known statically."""

    name: str  # the name on the command line (Parameter's first argument)
    attribute: str  # the class attribute it is bound to
    type: str  # one of KNOWN_TYPES, or "unknown" (custom types, dynamic defaults)
    default: object = None  # the literal default, None when absent or not a literal
    has_default: bool = False
    required: bool = False
    help: str | None = None
    lineno: int = 0


@dataclass(frozen=True)
class FlowInfo:
    """A FlowSpec subclass: its Parameters (inherited ones included) and step names."""

    name: str
    lineno: int
    parameters: list[ParamSpec] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    docstring: str | None = None


def find_flows(text: str) -> list[FlowInfo]:
    """Every FlowSpec subclass in the file, in source order."""
    return list(_flows(text))


@functools.lru_cache(maxsize=32)
def _flows(text: str) -> tuple[FlowInfo, ...]:
    """Parsed once per distinct file content: a thousand Experiments of one flow launch
    with one parse (parsing is serialised, ``_PARSING``; a parse per launch was 15% of
    the operator's profile converging them). The results are read, never changed."""
    tree = _parse(text)
    names = _metaflow_names(tree)
    flows: dict[str, FlowInfo] = {}
    for node in tree.body:  # source order: a base class precedes its subclasses
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [_dotted(b) for b in node.bases]
        inherited = [flows[b] for b in bases if b in flows]
        if not inherited and not any(b in names.flowspec for b in bases):
            continue
        params = {p.name: p for base in inherited for p in base.parameters}
        params.update({p.name: p for p in _parameters(node, names)})
        steps = [s for base in inherited for s in base.steps]
        steps += [s for s in _steps(node, names) if s not in steps]
        flows[node.name] = FlowInfo(
            name=node.name,
            lineno=node.lineno,
            parameters=list(params.values()),
            steps=steps,
            docstring=ast.get_docstring(node),
        )
    return tuple(flows.values())


def find_flow(text: str, name: str) -> FlowInfo | None:
    """The FlowSpec class ``name``; None when absent, FlowInspectError when it is no flow."""
    for flow in find_flows(text):
        if flow.name == name:
            return flow
    tree = _parse(text)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            bases = ", ".join(_dotted(b) or ast.unparse(b) for b in node.bases) or "object"
            raise FlowInspectError(
                f"class {name} (line {node.lineno}) is not a Metaflow FlowSpec: it derives "
                f"from {bases}; declare it as `class {name}(FlowSpec)`"
            )
    return None


def check_parameters(declared: list[ParamSpec], given: dict[str, object]) -> list[str]:
    """Problems with ``given`` against the flow's declared Parameters (empty: all fine).

    Values are never coerced: a string "5" for an int Parameter is a problem, because
    the spec author most likely quoted a number by mistake (int is fine for float).
    """
    by_name = {p.name: p for p in declared}
    problems: list[str] = []
    for key in sorted(given):
        spec = by_name.get(key)
        if spec is None:
            known = ", ".join(sorted(by_name)) or "none"
            problems.append(f"parameter {key!r} is not declared by the flow (declared: {known})")
            continue
        problem = _type_problem(spec, given[key])
        if problem:
            problems.append(f"parameter {key!r} {problem}")
    for spec in declared:
        if spec.required and not spec.has_default and spec.name not in given:
            problems.append(f"parameter {spec.name!r} is required by the flow but not given")
    return problems


def _type_problem(spec: ParamSpec, value: object) -> str | None:
    shown = f"{_kind(value)} {value!r}"
    if value is None:
        return "must not be null"
    if spec.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {shown}"
    elif spec.type == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {shown}"
    elif spec.type == "bool":
        if not isinstance(value, bool):
            return f"must be a boolean (true/false), got {shown}"
    elif spec.type == "str":
        if not isinstance(value, str):
            return f"must be a string, got {shown} (quote it)"
    elif spec.type == "json":
        if not isinstance(value, str):
            return f"must be a JSON document in a string, got {shown}"
        try:
            json.loads(value)
        except ValueError as exc:
            return f"must be valid JSON: {exc}"
    return None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string"}.get(type(value), type(value).__name__)


@dataclass
class _Names:
    """Local names bound to metaflow's FlowSpec, Parameter, step and JSONType."""

    flowspec: set[str] = field(default_factory=lambda: {"metaflow.FlowSpec"})
    parameter: set[str] = field(default_factory=lambda: {"metaflow.Parameter"})
    step: set[str] = field(default_factory=lambda: {"metaflow.step"})
    jsontype: set[str] = field(default_factory=lambda: {"metaflow.JSONType"})


def _metaflow_names(tree: ast.Module) -> _Names:
    names = _Names()
    wanted = {
        "FlowSpec": names.flowspec,
        "Parameter": names.parameter,
        "step": names.step,
        "JSONType": names.jsontype,
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "metaflow":
            for alias in node.names:
                if alias.name in wanted:
                    wanted[alias.name].add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "metaflow" and alias.asname:
                    for original, bucket in wanted.items():
                        bucket.add(f"{alias.asname}.{original}")
    return names


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


# CPython 3.11's ast.parse is not safe in concurrent threads ("SystemError: AST constructor
# recursion depth mismatch"), and preflights run in worker threads, many at once at scale.
_PARSING = threading.Lock()


def _parse(text: str) -> ast.Module:
    try:
        with _PARSING:
            return ast.parse(text)
    except SyntaxError as exc:
        raise FlowInspectError(f"syntax error at line {exc.lineno}: {exc.msg}") from exc


def _steps(cls: ast.ClassDef, names: _Names) -> list[str]:
    return [
        n.name
        for n in cls.body
        if isinstance(n, ast.FunctionDef)
        and any(_dotted(d) in names.step for d in n.decorator_list)
    ]


def _parameters(cls: ast.ClassDef, names: _Names) -> list[ParamSpec]:
    out = []
    for node in cls.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and isinstance(value, ast.Call)):
            continue
        if _dotted(value.func) not in names.parameter:
            continue
        out.append(_parameter(target.id, value, names))
    return out


def _parameter(attribute: str, call: ast.Call, names: _Names) -> ParamSpec:
    kwargs = {k.arg: k.value for k in call.keywords if k.arg}
    name_node = call.args[0] if call.args else kwargs.get("name")
    name = _literal(name_node) if name_node is not None else None
    if not isinstance(name, str):
        name = attribute
    default_node = kwargs.get("default")
    default, literal = (None, False) if default_node is None else _try_literal(default_node)
    type_node = kwargs.get("type")
    if type_node is not None:
        spelled = _dotted(type_node)
        if spelled in names.jsontype:
            ptype = "json"
        elif spelled in ("int", "float", "str", "bool"):
            ptype = spelled
        else:
            ptype = "unknown"
    elif default_node is None:
        ptype = "str"  # Metaflow's own default when neither type nor default is given
    elif literal and type(default) in (int, float, str, bool):
        ptype = type(default).__name__
    else:
        ptype = "unknown"  # a deploy-time function or expression: cannot tell statically
    required = _literal(kwargs["required"]) is True if "required" in kwargs else False
    help_text = _literal(kwargs["help"]) if "help" in kwargs else None
    return ParamSpec(
        name=name,
        attribute=attribute,
        type=ptype,
        default=default if literal else None,
        has_default=default_node is not None,
        required=required,
        help=help_text if isinstance(help_text, str) else None,
        lineno=call.lineno,
    )


def _try_literal(node: ast.expr) -> tuple[object, bool]:
    try:
        return ast.literal_eval(node), True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None, False


def _literal(node: ast.expr | None) -> object:
    return None if node is None else _try_literal(node)[0]
