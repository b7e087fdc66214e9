"""``trellis plan``: read both sides with GitPython (or the cluster), plan, render.

The head is validated exactly as the operator will validate it (schema, CEL, unique
names, flows, references, coherence); a file with errors is left out of the plan and
listed in an errors section, and the exit status is 1 so CI fails the check. The
base is read leniently: it only says what exists today.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from controller import api, schema, validate
from controller.gitops import plan as planner
from controller.gitops import repochecks, trees
from controller.gitops.live import LiveCluster, LiveError
from controller.gitops.plan import Key
from controller.specfiles import Document, FileError

DEFAULT_NAMESPACE = "default"


def key_of(doc: Document) -> Key:
    return (doc.kind or "", doc.namespace or DEFAULT_NAMESPACE, doc.name or "")


def _spec_object(obj: dict[str, Any]) -> dict[str, Any]:
    """What the plan compares: kind, metadata labels/annotations, spec with defaults."""
    meta = obj.get("metadata") or {}
    out = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
           "metadata": {"labels": meta.get("labels") or {},
                        "annotations": meta.get("annotations") or {}},
           "spec": obj.get("spec") or {}}
    return schema.with_defaults(out)


def _lenient(docs: list[Document]) -> dict[Key, dict[str, Any]]:
    return {key_of(d): _spec_object(d.obj) for d in docs
            if not schema.validate_object(d.obj)}


def _code(tree: trees.SourceTree, objs: dict[Key, dict[str, Any]]) -> dict[Key, dict[str, str]]:
    return {k: trees.flow_code(tree, o["spec"]["flow"]["file"]) for k, o in objs.items()
            if k[0] == api.EXPERIMENT.kind}


def _live_side(cluster: LiveCluster, repo: Any, namespaces: set[str]
               ) -> tuple[dict[Key, dict[str, Any]], dict[Key, dict[str, str]]]:
    """Live objects in the spec namespaces (only Trellis-managed ones can be pruned),
    and each live Experiment's flow code at the commit it was synced from."""
    objs: dict[Key, dict[str, Any]] = {}
    code: dict[Key, dict[str, str]] = {}
    for ns in sorted(namespaces):
        for kind in (api.EXPERIMENT, api.MODEL_DEPLOYMENT):
            for name, obj in cluster.objects(kind, ns).items():
                key = (kind.kind, ns, name)
                objs[key] = _spec_object(obj)
                commit = (obj["metadata"].get("annotations") or {}).get(api.ANN_SOURCE_COMMIT)
                if kind is api.EXPERIMENT and commit:
                    try:
                        tree = trees.CommitTree(trees.resolve(repo, commit))
                    except trees.GitRefError:
                        continue  # synced from a commit this clone lacks: no code diff
                    code[key] = trees.flow_code(tree, obj["spec"]["flow"]["file"])
    return objs, code


def _managed(obj: dict[str, Any]) -> bool:
    return obj["metadata"]["labels"].get(api.LABEL_MANAGED_BY) == api.MANAGED_BY


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the renderers need; raises UserError for what the user must fix."""
    from controller.cli import UserError

    try:
        repo = trees.open_repo(Path(args.repo))
        head = trees.resolve(repo, args.head)
        base = None
        if not args.cluster:
            base = trees.resolve(repo, args.base) if args.base \
                else trees.default_branch_base(repo, head)
    except trees.GitRefError as exc:
        raise UserError(str(exc)) from exc
    head_tree = trees.CommitTree(head)
    cluster = None
    if args.cluster:
        try:
            cluster = LiveCluster()
        except LiveError as exc:
            raise UserError(str(exc)) from exc
    docs, file_errors = trees.load_documents(head_tree, args.path)
    ctx = repochecks.RepoContext(head_tree, default_namespace=DEFAULT_NAMESPACE,
                                 external=cluster.experiment if cluster else None)
    try:
        errors = file_errors + validate.check_documents(docs, repochecks.checks_for(ctx))
    except LiveError as exc:
        raise UserError(str(exc)) from exc
    errors.sort(key=lambda e: (str(e.path), e.line or 0))
    bad_files = {str(e.path) for e in errors}
    new = {key_of(d): _spec_object(d.obj) for d in docs if str(d.path) not in bad_files}
    blocked = {key_of(d) for d in docs if str(d.path) in bad_files}
    code_new = _code(head_tree, new)
    if cluster is not None:
        try:
            old, code_old = _live_side(cluster, repo, {k[1] for k in [*new, *blocked]})
        except LiveError as exc:
            raise UserError(str(exc)) from exc
        old = {k: o for k, o in old.items() if k in new or k in blocked or _managed(o)}
        base_label = "the cluster"
    else:
        assert base is not None
        base_tree = trees.CommitTree(base)
        base_docs, _ = trees.load_documents(base_tree, args.path)
        old = _lenient(base_docs)
        blocked |= {key_of(d) for d in base_docs if str(d.path) in bad_files}
        code_old = _code(base_tree, old)
        base_label = base.hexsha
    result = planner.plan(old, new, code_old=code_old, code_new=code_new, blocked=blocked)
    return {"base": base_label, "head": head.hexsha, "path": args.path, "plan": result,
            "errors": errors}


# ------------------------------------------------------------------------ rendering
def _short(ref: str) -> str:
    return ref[:12] if len(ref) == 40 else ref


def render_text(data: dict[str, Any]) -> str:
    result: planner.Plan = data["plan"]
    lines = [c.line() for c in result.consequences] or ["no changes"]
    lines += [f"error: {e}" for e in data["errors"]]
    return "\n".join(lines)


def render_markdown(data: dict[str, Any]) -> str:
    result: planner.Plan = data["plan"]
    errors: list[FileError] = data["errors"]
    out = [f"### Trellis plan: `{_short(data['base'])}` {planner.ARROW} "
           f"`{_short(data['head'])}`", ""]
    if result.consequences:
        out += [f"- {c.line()}" for c in result.consequences]
    else:
        out.append("No changes to the cluster.")
    out += ["", f"_{result.unchanged} object(s) unchanged._"]
    if errors:
        out += ["", f"#### ❌ {len(errors)} error(s): nothing from this commit will be applied "
                "until they are fixed", ""]
        out += [f"- `{e}`" for e in errors]
    return "\n".join(out)


def render_json(data: dict[str, Any]) -> str:
    result: planner.Plan = data["plan"]
    errors: list[FileError] = data["errors"]
    return json.dumps({
        "base": data["base"], "head": data["head"], "path": data["path"], "ok": not errors,
        "changes": [c.as_json() for c in result.consequences],
        "unchanged": result.unchanged,
        "errors": [{"path": str(e.path), "line": e.line, "message": e.message}
                   for e in errors],
    }, indent=2, ensure_ascii=False)


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}


def run_plan(args: argparse.Namespace) -> int:
    """The ``trellis plan`` command: print the plan; 1 when the head is invalid."""
    data = build(args)
    sys.stdout.write(RENDERERS[args.format](data) + "\n")
    return 1 if data["errors"] else 0
