"""Reading flow files statically: FlowSpec classes, Parameters, and parameter checks."""

from __future__ import annotations

import textwrap

import pytest

from controller.paths import FLOWS_DIR
from controller.training import flowinspect
from controller.training.flowinspect import FlowInspectError, ParamSpec

HEADER = "from metaflow import FlowSpec, Parameter, JSONType, step\n"


def flow_with(body: str, header: str = HEADER) -> str:
    return header + "class F(FlowSpec):\n" + textwrap.indent(textwrap.dedent(body), "    ")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('a = Parameter("a", default=3, help="three")',
         {"name": "a", "type": "int", "default": 3, "has_default": True, "help": "three"}),
        ('a = Parameter("a", type=float, default=1)', {"type": "float", "default": 1}),
        ('a = Parameter("a", default=0.5)', {"type": "float"}),
        ('a = Parameter("a", default="x")', {"type": "str", "default": "x"}),
        ('a = Parameter("a", default=False)', {"type": "bool", "default": False}),
        ('a = Parameter("a")', {"type": "str", "has_default": False, "required": False}),
        ('a = Parameter("a", type=int, required=True)', {"type": "int", "required": True}),
        ('a = Parameter("a", type=JSONType, default="{}")', {"type": "json"}),
        ('a = Parameter("a", default=lambda ctx: 3)',
         {"type": "unknown", "default": None, "has_default": True}),
        ('a = Parameter("a", type=MyType, default=3)', {"type": "unknown", "default": 3}),
        ('attr = Parameter(name="cli-name", default=1)', {"name": "cli-name", "attribute": "attr"}),
        ('a = Parameter("a", default=-2)', {"default": -2, "type": "int"}),
    ],
)
def test_parameter_declarations(body: str, expected: dict) -> None:
    (param,) = flowinspect.find_flow(flow_with(body), "F").parameters
    for key, value in expected.items():
        assert getattr(param, key) == value, key


@pytest.mark.parametrize(
    ("source", "name", "outcome"),
    [
        # plain, aliased and module-qualified spellings of FlowSpec
        (HEADER + "class F(FlowSpec):\n    pass\n", "F", "found"),
        ("from metaflow import FlowSpec as FS\nclass F(FS):\n    pass\n", "F", "found"),
        ("import metaflow\nclass F(metaflow.FlowSpec):\n    pass\n", "F", "found"),
        ("import metaflow as mf\nclass F(mf.FlowSpec):\n    pass\n", "F", "found"),
        # a subclass of a flow in the same file is a flow too
        (HEADER + "class Base(FlowSpec):\n    pass\nclass F(Base):\n    pass\n", "F", "found"),
        (HEADER + "class F(FlowSpec):\n    pass\n", "G", "absent"),
        (HEADER + "class F(object):\n    pass\n", "F", "not a Metaflow FlowSpec"),
        ("class F(FlowSpec):\n    pass\n", "F", "not a Metaflow FlowSpec"),  # never imported
        ("class F(FlowSpec:\n", "F", "syntax error at line 1"),
    ],
)
def test_find_flow(source: str, name: str, outcome: str) -> None:
    if outcome == "found":
        assert flowinspect.find_flow(source, name).name == name
    elif outcome == "absent":
        assert flowinspect.find_flow(source, name) is None
    else:
        with pytest.raises(FlowInspectError, match=outcome):
            flowinspect.find_flow(source, name)


def test_inherited_parameters_and_steps() -> None:
    source = HEADER + textwrap.dedent("""
        class Base(FlowSpec):
            seed = Parameter("seed", default=1)
            @step
            def start(self):
                self.next(self.end)
        class F(Base):
            seed = Parameter("seed", default=2)
            lr = Parameter("lr", default=0.1)
            @step
            def end(self):
                pass
            def helper(self):
                pass
    """)
    flow = flowinspect.find_flow(source, "F")
    assert {p.name: p.default for p in flow.parameters} == {"seed": 2, "lr": 0.1}
    assert flow.steps == ["start", "end"]
    assert [f.name for f in flowinspect.find_flows(source)] == ["Base", "F"]


def test_pumpkin_flow_is_read_without_running_it() -> None:
    text = (FLOWS_DIR / "pumpkin_flow.py").read_text()
    flow = flowinspect.find_flow(text, "PumpkinFlow")
    assert flow.steps == ["start", "verify", "train", "evaluate", "end"]
    types = {p.name: p.type for p in flow.parameters}
    assert types == {
        "seed": "int", "n_samples": "int", "image_size": "int", "variety": "str",
        "white_fraction": "float", "watermelon_fraction": "float", "epochs": "int",
        "lr": "float", "batch_size": "int", "max_invalid_fraction": "float",
        "feedback_uri": "str", "feedback_weight": "int", "live_reference_min": "int",
        "fail_at_step": "str",
    }
    assert all(p.help for p in flow.parameters)


DECLARED = [
    ParamSpec("epochs", "epochs", "int", 8, True),
    ParamSpec("lr", "lr", "float", 0.01, True),
    ParamSpec("variety", "variety", "str", "orange", True),
    ParamSpec("shuffle", "shuffle", "bool", True, True),
    ParamSpec("config", "config", "json", "{}", True),
    ParamSpec("dataset", "dataset", "str", None, False, required=True),
    ParamSpec("custom", "custom", "unknown", None, True),
]


@pytest.mark.parametrize(
    ("given", "problems"),
    [
        ({"dataset": "d"}, []),
        ({"dataset": "d", "epochs": 3, "lr": 1, "variety": "white", "shuffle": False,
          "config": '{"a": 1}', "custom": [1]}, []),
        ({"dataset": "d", "lr": 0.5}, []),
        ({"dataset": "d", "epochs": "5"}, ["'epochs' must be an integer, got string '5'"]),
        ({"dataset": "d", "epochs": 5.0}, ["'epochs' must be an integer, got number 5.0"]),
        ({"dataset": "d", "epochs": True}, ["'epochs' must be an integer, got boolean True"]),
        ({"dataset": "d", "lr": "0.1"}, ["'lr' must be a number, got string '0.1'"]),
        ({"dataset": "d", "lr": False}, ["'lr' must be a number, got boolean False"]),
        ({"dataset": "d", "shuffle": "true"}, ["'shuffle' must be a boolean"]),
        ({"dataset": "d", "shuffle": 1}, ["'shuffle' must be a boolean"]),
        ({"dataset": "d", "variety": 3}, ["'variety' must be a string, got integer 3"]),
        ({"dataset": "d", "config": "{bad"}, ["'config' must be valid JSON"]),
        ({"dataset": "d", "epochs": None}, ["'epochs' must not be null"]),
        ({"dataset": "d", "epoch": 3}, ["'epoch' is not declared by the flow (declared: config"]),
        ({}, ["'dataset' is required by the flow but not given"]),
        ({"epochs": "x", "nope": 1},
         ["'epochs' must be an integer", "'nope' is not declared", "'dataset' is required"]),
    ],
)
def test_check_parameters(given: dict, problems: list[str]) -> None:
    got = flowinspect.check_parameters(DECLARED, given)
    assert len(got) == len(problems), got
    for message, expected in zip(got, problems, strict=True):
        assert expected in message
