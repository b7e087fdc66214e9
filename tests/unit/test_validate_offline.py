"""``trellis validate`` offline: the same rules as the API server, with file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import specfiles
from controller.paths import EXAMPLES_DIR, ROOT
from controller.validate import validate_paths
from tests.support.specs import AS_THE_SERVER_READS, REJECTED, SPELLINGS, base, mutate


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




DUPLICATES = """\
apiVersion: mlops.trellis.dev/v1alpha1
kind: Experiment
metadata: {name: e, name: e2}
defaults: &res {gpu: 1, cpu: 2}
spec:
  flow: {file: flows/f.py, name: F}
  resources:
    gpu: 1
    cpu: 2
    gpu: 0
  objective: {metric: accuracy, goal: maximize, threshold: 0.9}
"""


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    """kubectl and the API server keep the last ``gpu`` without a word; we refuse."""
    f = tmp_path / "dup.yaml"
    f.write_text(DUPLICATES)
    proc = trellis(str(f))
    assert proc.returncode == 1
    assert f'{f}:10: duplicate key "gpu" (lines 8 and 10)' in proc.stderr, proc.stderr
    assert f'{f}:3: duplicate key "name" (twice on line 3)' in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_merge_keys_and_distinct_typed_keys_are_no_duplicates(tmp_path: Path) -> None:
    f = tmp_path / "merge.yaml"
    f.write_text("a: &x {k: 1, j: 2}\nb:\n  <<: *x\n  k: 3\nc: {1: a, '1': b, true: c}\n")
    docs, errors = specfiles.read(f)
    assert not errors, errors
    assert docs[0].obj["b"] == {"k": 3, "j": 2}


def test_the_sync_reads_files_the_same_way(tmp_path: Path) -> None:
    """The SpecRepository sync parses commits with the same loader: it refuses too."""
    from controller.gitops import commits
    from tests.support.gitrepo import FLOW, GitRepo

    repo = GitRepo(tmp_path / "farm")
    repo.write("flows/f.py", FLOW)
    repo.write("specs/e.yaml", DUPLICATES)
    sha = repo.commit("duplicate gpu")
    docs, file_errors = commits.load_commit(repo.work, sha, "specs", "farm")
    errors = commits.validate_commit(repo.work, sha, docs, file_errors, "farm", {})
    assert 'specs/e.yaml:10: duplicate key "gpu" (lines 8 and 10)' in "\n".join(errors)


@pytest.mark.parametrize(("kind", "path", "value", "ok"), AS_THE_SERVER_READS,
                         ids=[f"{p}={v!r}"[:60] for _, p, v, _ in AS_THE_SERVER_READS])
def test_documents_are_read_as_the_api_server_reads_them(tmp_path: Path, kind: str, path: str,
                                                          value: Any, ok: bool) -> None:
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(mutate(base(kind), path, value)))
    report = validate_paths([f])
    assert report.ok is ok, report.text()


def test_cel_cannot_read_a_float_where_an_integer_belongs() -> None:
    """JSON sent as is (not a YAML file: there 100.0 is 100) carries the float, and the
    server's CEL conversion fails on it: the rule, and so the object, fails."""
    from controller.schema import validate_object

    steps = mutate(base("ModelDeployment"), "spec.canary.steps", [10, 50, 100.0])
    assert any("strictly increasing" in p.message for p in validate_object(steps))
    version = mutate(base("ModelDeployment"), "spec.model.version", 2.0)
    assert validate_object(version)
    assert not validate_object(mutate(base("ModelDeployment"), "spec.replicas", 2.0))


@pytest.mark.parametrize(("what", "text", "ok"), SPELLINGS, ids=[w for w, _, _ in SPELLINGS])
def test_plain_scalars_are_read_as_kubectl_reads_them(tmp_path: Path, what: str, text: str,
                                                       ok: bool) -> None:
    f = tmp_path / "spec.yaml"
    f.write_text(text)
    report = validate_paths([f])
    assert report.ok is ok, report.text()


@pytest.mark.parametrize(("text", "value"), [
    ("y", True), ("N", False), ("yes", True), ("off", False), ("~", None), ("1e3", 1000),
    ("1.5e3", 1500), (".5", 0.5), ("0x1f", 31), ("0o17", 15), ("017", 15), ("1_000", 1000),
    ("1:30", "1:30"), ("100.0", 100), ("-0.0", 0), ("1e400", "1e400"), ("0b101", 5),
    ("2024-01-01", "2024-01-01"), ("2001-12-14t21:59:43.10-05:00",
                                   "2001-12-14t21:59:43.10-05:00"),
    ("2024-13-01", "2024-13-01"), ("9223372036854775808", 2**63), ("tRue", "tRue"),
    ("1.", 1), ("12e", "12e"), ("'y'", "y"), ('"1e3"', "1e3"),
    (".5_0", 0.5), (".5e1_0", 5 * 10**9), ("._5", "._5"), (".5_", ".5_"),
    # Go writes an integral float with its shortest digits: -2**63 leaves int64.
    ("-9223372036854775808.0", -9223372036854776000),
    ("9223372036854774784.0", 9223372036854775000),
])
def test_scalar_resolution_follows_go_yaml(text: str, value: Any) -> None:
    docs, errors = specfiles.parse(Path("x.yaml"), f"a: {text}\n")
    assert not errors
    got = docs[0].obj["a"]
    assert got == value and type(got) is type(value), got
