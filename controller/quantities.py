"""Kubernetes resource quantities (``500m``, ``1.5``, ``4Gi``, ``2G``, ``1e3``), exactly.

``Experiment.spec.resources.cpu`` and ``.memory`` take a quantity as every Kubernetes user
writes it, or a plain integer as before (cpu: cores; memory: MiB, kept for backward
compatibility). Values are parsed to :class:`fractions.Fraction` (no float drift:
``0.1`` is ``100m``, ``1Gi`` is 1073741824 bytes) the way ``resource.ParseQuantity``
reads them, and rendered for each consumer:

- Kubernetes (the training pod's requests and limits; CEL's ``quantity()``): the
  quantity as written;
- Metaflow (``--with resources:``, local runs): cpu as a decimal number of cores,
  memory as an integer number of MB (Metaflow writes ``"%sM"`` into the pod), both
  rounded *up* (to the millicore, to the MB): a step never gets less than asked.

Pure: no I/O. ``CEL_FUNCTIONS`` is Kubernetes' CEL quantity library for cel-python: the
CRD's bounds are CEL rules, and ``controller.schema`` evaluates them with these, so
``trellis validate`` and the API server judge quantities alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

from celpy import celtypes

# controller-tools' pattern for resource.Quantity (sigs.k8s.io/controller-tools,
# pkg/crd/known_types.go; what every generated CRD carries), with the exponent narrowed to
# an integer of at most two digits: the original also admits fractional exponents
# (``1e1.5``) that ParseQuantity itself refuses, and exponents no bound here allows.
PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
           r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]{1,2}))?$")
_QUANTITY = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)", re.DOTALL)
_PATTERN = re.compile(PATTERN.replace("$", r"\Z"))

# suffix -> (base, exponent), as apimachinery's suffixer interprets them
SUFFIXES: dict[str, tuple[int, int]] = {
    "": (10, 0), "n": (10, -9), "u": (10, -6), "m": (10, -3), "k": (10, 3), "M": (10, 6),
    "G": (10, 9), "T": (10, 12), "P": (10, 15), "E": (10, 18),
    "Ki": (2, 10), "Mi": (2, 20), "Gi": (2, 30), "Ti": (2, 40), "Pi": (2, 50), "Ei": (2, 60),
}
NANO = Fraction(1, 10**9)
MAX_BINARY = 2**63 - 1  # ParseQuantity caps binary-SI values here
MIB = 2**20
MB = 10**6
MILLICORE = Fraction(1, 1000)


class QuantityError(ValueError):
    """Not a quantity Trellis accepts."""


def parse(text: str) -> Fraction:
    """The exact value of quantity ``text``, as ParseQuantity gives it (non-zero values
    rounded away from zero to the nanounit; binary-SI values capped at 2**63-1)."""
    if not isinstance(text, str) or not _PATTERN.match(text):
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 1.5, "
                            "512Mi, 4Gi, 2G)")
    found = _QUANTITY.fullmatch(text)
    assert found is not None  # the pattern already matched
    sign, whole, frac, suffix = found.groups()
    digits = Fraction(Decimal(f"{whole or '0'}.{frac or '0'}"))
    if suffix in SUFFIXES:
        base, exponent = SUFFIXES[suffix]
    else:  # e3, E-2, e+10
        base, exponent = 10, int(suffix[1:])
    value = digits * Fraction(base) ** exponent
    if value:
        value = Fraction(math.ceil(value / NANO)) * NANO
    if base == 2:
        value = min(value, Fraction(MAX_BINARY))
    return -value if sign == "-" else value


def is_quantity(text: object) -> bool:
    try:
        parse(text)  # type: ignore[arg-type]
    except QuantityError:
        return False
    return True


# ----------------------------------------------------------------- Experiment resources
def cpu_cores(value: int | str) -> Fraction:
    """``spec.resources.cpu`` in cores: an integer counts cores, a string is a quantity."""
    if isinstance(value, bool):
        raise QuantityError(f"cpu {value!r} is not a number of cores nor a quantity")
    if isinstance(value, int):
        return Fraction(value)
    return parse(value)


def memory_bytes(value: int | str) -> int:
    """``spec.resources.memory`` in bytes (rounded up to a whole byte): an integer counts
    MiB (Trellis' unit before quantities), a string is a quantity (no unit: bytes)."""
    if isinstance(value, bool):
        raise QuantityError(f"memory {value!r} is not a number of MiB nor a quantity")
    if isinstance(value, int):
        return value * MIB
    return math.ceil(parse(value))


def kubernetes_cpu(value: int | str) -> str:
    """The cpu as a Kubernetes quantity, exactly as asked."""
    cpu_cores(value)  # refuse what is not one
    return str(value)


def kubernetes_memory(value: int | str) -> str:
    """The memory as a Kubernetes quantity, exactly as asked (an integer: ``<n>Mi``)."""
    memory_bytes(value)
    return f"{value}Mi" if isinstance(value, int) else value


def metaflow_cpu(value: int | str) -> str:
    """Cores for Metaflow's ``cpu=`` (a number it writes verbatim into the pod), rounded
    up to the millicore, Kubernetes' cpu precision: ``500m`` -> ``0.5``, ``2`` -> ``2``."""
    cores = cpu_cores(value)
    millicores = math.ceil(cores / MILLICORE)
    return _decimal(Fraction(millicores, 1000))


def metaflow_memory(value: int | str) -> int:
    """MB for Metaflow's ``memory=`` (an integer it writes as ``<n>M``, 10**6 bytes),
    rounded up: ``4Gi`` -> 4295 (4295000000 >= 4294967296 bytes); ``2048`` (MiB) -> 2148."""
    return math.ceil(Fraction(memory_bytes(value), MB))


def metaflow_resources(resources: Mapping[str, Any] | None) -> dict[str, str]:
    """``spec.resources`` as Metaflow's ``@resources``/``@kubernetes`` attributes (the keys
    given, None skipped): cpu in cores, memory in MB, gpu a count."""
    out: dict[str, str] = {}
    for name, value in (resources or {}).items():
        if value is None:
            continue
        if name == "cpu":
            out[name] = metaflow_cpu(value)
        elif name == "memory":
            out[name] = str(metaflow_memory(value))
        else:
            out[name] = str(int(value))
    return out


def threads(cpu: int | str) -> int:
    """Thread pools for a run given ``cpu`` (local runs, where nothing enforces it): the
    cores rounded up, at least one."""
    return max(1, math.ceil(cpu_cores(cpu)))


def _decimal(value: Fraction) -> str:
    """A terminating fraction as a plain decimal (no exponent, no trailing zeros)."""
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# --------------------------------------------------------- Kubernetes' CEL quantity library
class CelQuantity:
    """The value of CEL's ``quantity()`` (k8s.io/apiserver/pkg/cel/library/quantity.go)."""

    def __init__(self, value: Fraction) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"CelQuantity({self.value})"


def _cel_quantity(text: Any) -> CelQuantity:
    if not isinstance(text, str):
        raise TypeError("no such overload: quantity")
    return CelQuantity(parse(str(text)))  # a QuantityError fails the rule, as on the server


def _cel_is_quantity(text: Any) -> celtypes.BoolType:
    if not isinstance(text, str):
        raise TypeError("no such overload: isQuantity")
    return celtypes.BoolType(is_quantity(str(text)))


def _cel_cmp(a: Any, b: Any) -> int:
    if not isinstance(a, CelQuantity) or not isinstance(b, CelQuantity):
        raise TypeError("no such overload: expected quantities")
    return (a.value > b.value) - (a.value < b.value)


# The library's functions the CRDs' rules may use, for cel-python (``controller.schema``).
CEL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quantity": _cel_quantity,
    "isQuantity": _cel_is_quantity,
    "compareTo": lambda a, b: celtypes.IntType(_cel_cmp(a, b)),
    "isGreaterThan": lambda a, b: celtypes.BoolType(_cel_cmp(a, b) > 0),
    "isLessThan": lambda a, b: celtypes.BoolType(_cel_cmp(a, b) < 0),
    "sign": lambda a: celtypes.IntType(_cel_cmp(a, CelQuantity(Fraction(0)))),
}
