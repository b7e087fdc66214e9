"""The checks of ``trellis validate`` that need the repository (and maybe the cluster).

For each valid document, against the repository at a ref (or its work tree):

- Experiment: ``spec.flow.file`` exists, defines the FlowSpec ``spec.flow.name``, and
  every parameter is declared by the flow with a compatible type (required ones given);
  the flow is read with ``controller.training.flowinspect`` (parsed, never run).
- ModelDeployment: ``spec.model.experiment`` exists in the same namespace: among the
  checked documents, elsewhere in the repository, or (``--cluster``) in the cluster;
  and its canary and drift settings are coherent (``controller.gitops.coherence``).

The operator runs the same checks on every commit before it applies anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import api, schema
from controller.gitops import coherence, trees
from controller.gitops.trees import SourceTree
from controller.specfiles import Document
from controller.training import flowinspect
from controller.validate import RepoCheck

# (namespace, name) -> the Experiment found outside the checked documents, or None.
ExperimentLookup = Callable[[str, str], dict[str, Any] | None]
_PARAM = re.compile(r"^parameter '([^']*)'")


def namespace_of(doc: Document, default: str) -> str:
    return doc.namespace or default


@dataclass
class RepoContext:
    """What the checks share: the tree, the default namespace, look-ups outside it."""

    tree: SourceTree
    default_namespace: str = "default"
    scan_repository: bool = True
    external: ExperimentLookup | None = None
    _repo_experiments: dict[tuple[str, str], dict[str, Any]] | None = field(default=None)
    _flows: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def flow_text(self, path: str) -> tuple[str | None, str | None]:
        """(text, problem) of a flow file, read once per run."""
        if path not in self._flows:
            raw = self.tree.read_bytes(path)
            if raw is None:
                self._flows[path] = (None, f'flow file "{path}" not found in {self.tree.label}')
            else:
                try:
                    self._flows[path] = (raw.decode("utf-8"), None)
                except UnicodeDecodeError:
                    self._flows[path] = (None, f'flow file "{path}" is not UTF-8 text')
        return self._flows[path]

    def repository_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        if not self.scan_repository:
            return None
        if self._repo_experiments is None:
            self._repo_experiments = {
                (namespace_of(d, self.default_namespace), d.name or ""): d.obj
                for d in trees.iter_trellis_documents(self.tree)
                if d.kind == api.EXPERIMENT.kind}
        return self._repo_experiments.get((namespace, name))


def flow_check(ctx: RepoContext) -> RepoCheck:
    def check(_docs: list[Document], doc: Document) -> list[schema.Problem]:
        if doc.kind != api.EXPERIMENT.kind:
            return []
        spec = doc.obj["spec"]
        flow_file, flow_name = spec["flow"]["file"], spec["flow"]["name"]
        text, problem = ctx.flow_text(flow_file)
        if text is None:
            return [schema.Problem(("spec", "flow", "file"), problem or "unreadable")]
        try:
            found = flowinspect.find_flow(text, flow_name)
        except flowinspect.FlowInspectError as exc:
            return [schema.Problem(("spec", "flow", "name"), f"{flow_file}: {exc}")]
        if found is None:
            names = [f.name for f in flowinspect.find_flows(text)]
            listed = ", ".join(names) if names else "none"
            return [schema.Problem(("spec", "flow", "name"),
                                   f'{flow_file} defines no FlowSpec class "{flow_name}" '
                                   f"(FlowSpec classes there: {listed})")]
        given = spec.get("parameters") or {}
        problems = []
        for message in flowinspect.check_parameters(found.parameters, given):
            match = _PARAM.match(message)
            path: tuple[str, ...] = ("spec", "parameters")
            if match and match.group(1) in given:
                path = (*path, match.group(1))
            problems.append(schema.Problem(path, f"{flow_name} ({flow_file}): {message}"))
        return problems

    return check


def _find_experiment(ctx: RepoContext, docs: list[Document], namespace: str,
                     name: str) -> tuple[dict[str, Any] | None, bool]:
    """(the Experiment object or None, whether it exists at all)."""
    for d in docs:
        if (d.kind == api.EXPERIMENT.kind and d.name == name
                and namespace_of(d, ctx.default_namespace) == namespace):
            return d.obj, True
    found = ctx.repository_experiment(namespace, name)
    if found is not None:
        return found, True
    if ctx.external is not None:
        live = ctx.external(namespace, name)
        if live is not None:
            return live, True
    return None, False


def deployment_check(ctx: RepoContext) -> RepoCheck:
    def check(docs: list[Document], doc: Document) -> list[schema.Problem]:
        if doc.kind != api.MODEL_DEPLOYMENT.kind:
            return []
        namespace = namespace_of(doc, ctx.default_namespace)
        spec = schema.with_defaults(doc.obj)["spec"]
        experiment = spec["model"]["experiment"]
        obj, exists = _find_experiment(ctx, docs, namespace, experiment)
        problems = []
        if not exists:
            where = "the checked files or the repository" if ctx.scan_repository \
                else "this commit"
            if ctx.external is not None:
                where += " nor in the cluster"
            problems.append(schema.Problem(
                ("spec", "model", "experiment"),
                f'Experiment "{experiment}" not found in namespace "{namespace}" '
                f"(not in {where})"))
        problems += coherence.deployment_problems(spec, (obj or {}).get("spec"))
        return problems

    return check


def checks_for(ctx: RepoContext) -> list[RepoCheck]:
    return [flow_check(ctx), deployment_check(ctx)]


# ------------------------------------------------------------------------------ CLI
def _cluster_lookup() -> ExperimentLookup:
    """Experiments of the current KUBECONFIG's cluster (read once per namespace)."""
    from controller.cli import UserError
    from controller.gitops.live import LiveCluster, LiveError

    try:
        cluster = LiveCluster()
    except LiveError as exc:
        raise UserError(str(exc)) from exc

    def lookup(namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cluster.experiment(namespace, name)
        except LiveError as exc:
            raise UserError(str(exc)) from exc

    return lookup


def open_tree(repo: Path, ref: str | None) -> SourceTree:
    """The commit ``ref`` names, or the work tree when ``ref`` is None."""
    from controller.cli import UserError

    if ref is None:
        if not repo.is_dir():
            raise UserError(f"--repo {repo}: no such directory")
        return trees.WorkTree(repo)
    try:
        return trees.CommitTree(trees.resolve(trees.open_repo(repo), ref))
    except trees.GitRefError as exc:
        raise UserError(str(exc)) from exc


def repo_checks(repo: Path, ref: str | None = None, cluster: bool = False) -> list[RepoCheck]:
    """``trellis validate --repo [--ref] [--cluster]``: the checks to add to the schema's."""
    ctx = RepoContext(open_tree(repo, ref), external=_cluster_lookup() if cluster else None)
    return checks_for(ctx)
