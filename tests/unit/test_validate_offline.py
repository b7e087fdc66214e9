"""``trellis validate`` offline: the same rules as the API server, with file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.paths import EXAMPLES_DIR, ROOT
from controller.validate import validate_paths
from tests.support.specs import REJECTED, base, mutate


def trellis(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "validate", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def test_examples_are_valid() -> None:
    report = validate_paths([EXAMPLES_DIR])
    assert report.ok, report.text()
    assert len(report.documents) >= 2


@pytest.mark.parametrize(("kind", "path", "value", "words"), REJECTED,
                         ids=[f"{k}:{p}" for k, p, _, _ in REJECTED])
def test_offline_rejects_what_the_api_server_rejects(tmp_path: Path, kind: str, path: str,
                                                     value: Any, words: list[str]) -> None:
    doc = mutate(base(kind), path, value)
    f = tmp_path / "spec.yaml"
    f.write_text("# a comment line\n" + yaml.safe_dump(doc, sort_keys=False))
    report = validate_paths([f])
    assert not report.ok, f"accepted: {doc}"
    field = words[0]
    hit = [e for e in report.errors if field.split("[")[0] in e.message]
    assert hit, report.text()
    assert all(e.line and e.line >= 2 for e in report.errors), report.text()


def test_line_numbers_point_at_the_field(tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text(
        "apiVersion: mlops.trellis.dev/v1alpha1\n"
        "kind: Experiment\n"
        "metadata:\n"
        "  name: e\n"
        "spec:\n"
        "  flow: {file: flows/f.py, name: F}\n"
        "  resources:\n"
        "    gpu: -2\n"
        "  objective: {metric: accuracy, goal: maximize, threshold: 0.9}\n"
    )
    report = validate_paths([f])
    assert [str(e) for e in report.errors] == [
        f"{f}:8: spec.resources.gpu: Invalid value: -2: should be >= 0"]


def test_parameters_must_be_scalars_with_identifier_names(tmp_path: Path) -> None:
    doc = mutate(base("Experiment"), "spec.parameters", {"Bad-Name": 1, "nested": {"a": 1}})
    f = tmp_path / "e.yaml"
    f.write_text(yaml.safe_dump(doc))
    text = validate_paths([f]).text()
    assert "spec.parameters.Bad-Name" in text
    assert "spec.parameters.nested" in text and "scalar" in text


BAD_FILES = {
    "syntax.yaml": (b"kind: Experiment\nspec: [1, 2\n", "YAML syntax error"),
    "unknown-kind.yaml": (b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
                          'unknown kind "Pod"'),
    "empty.yaml": (b"", "empty file"),
    "comments.yaml": (b"# nothing here\n", "empty file"),
    "binary.yaml": (bytes(range(256)) * 4, "binary"),
    "list.yaml": (b"- 1\n- 2\n", "must be a YAML mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_input_is_one_clear_line(tmp_path: Path, name: str) -> None:
    content, words = BAD_FILES[name]
    (tmp_path / name).write_bytes(content)
    proc = trellis(str(tmp_path / name))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert words in lines[0]
    assert lines[0].startswith(f"{tmp_path / name}:")
    assert "Traceback" not in proc.stderr


def test_duplicate_names_in_one_directory(tmp_path: Path) -> None:
    doc = base("Experiment")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(doc))
    proc = trellis(str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert 'duplicate Experiment "classifier"' in proc.stderr
    assert "a.yaml" in proc.stderr and "b.yaml" in proc.stderr


def test_same_name_in_other_kind_or_namespace_is_fine(tmp_path: Path) -> None:
    exp = base("Experiment")
    other_ns = mutate(exp, "metadata.namespace", "other")
    docs = [exp, other_ns, base("ModelDeployment")]
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(docs))
    proc = trellis(str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_json_output(tmp_path: Path) -> None:
    doc = mutate(base("Experiment"), "spec.resources.gpu", -1)
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(doc))
    proc = trellis("--format", "json", str(tmp_path))
    assert proc.returncode == 1
    import json

    data = json.loads(proc.stdout)
    assert data["ok"] is False
    assert data["errors"][0]["message"].startswith("spec.resources.gpu")


def test_valid_directory_exits_zero() -> None:
    proc = trellis(str(EXAMPLES_DIR))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_missing_path(tmp_path: Path) -> None:
    proc = trellis(str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1
    assert "no such file" in proc.stderr


