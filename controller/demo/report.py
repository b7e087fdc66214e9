"""The demo's closing report: one static HTML page with its figures beside it, and the
same story in short as Markdown (``report.md``, for a terminal or a CI log).

``make demo`` ends by calling ``write_report`` with everything it recorded. The page must
open anywhere, offline, years later: no scripts, no external stylesheets or fonts, the
figures as PNG files in ``img/`` referenced relatively. It is written to be looked at
rather than read: the header answers "what happened, how long, what runs now", and each
section is a figure first, details after. A recording that stopped early still renders:
every section says "no data" in place of what is missing, and a figure that cannot be
drawn says why on the page instead of losing the whole report. The report says which
mode ran (local: processes here; cluster: pods on a node, models in S3) and which parts
of the story did not run in it, and why.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.demo import plots
from controller.demo.timeline import (
    OUTCOME_WORDS,
    Part,
    Rollout,
    Run,
    Story,
    clock,
    duration,
    read_story,
)

log = logging.getLogger(__name__)

REASON_WORDS = {"ObjectiveNotMet": "objective not met", "RunFailed": "run failed",
                "RunLost": "run lost"}


def write_report(data: dict[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` (and ``out_dir/img/*.png``); return the page's path."""
    out_dir = Path(out_dir)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    story = read_story(data)
    body = "\n".join([
        _header(story),
        '<main class="wrap">',
        _training(story, out_dir),
        _canary(story, out_dir),
        _drift(story, out_dir),
        _lineage(story),
        _kubectl(story),
        _where(story),
        "</main>",
        f'<footer class="wrap">Recorded {_e(_utc(story.t0))} · written by Trellis '
        "(<code>controller/demo/report.py</code>)</footer>",
    ])
    page = out_dir / "index.html"
    page.write_text(
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(story.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n", encoding="utf-8")
    return page


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _n(count: int, word: str) -> str:
    plural = word[:-2] + "es" if word.endswith("is") else word + "s"
    return f"{count} {word if count == 1 else plural}"


def _ver(version: int | None) -> str:
    if version is None:
        return '<span class="muted">—</span>'
    return (f'<span class="ver" style="background:{plots.version_colour(version)}">'
            f"v{version}</span>")


def _badge(kind: str, text: str) -> str:
    return f'<span class="badge {_e(kind)}">{_e(text)}</span>'


def _nodata(text: str) -> str:
    return f'<p class="nodata">{_e(text)}</p>'


def _section(ident: str, number: int, title: str, lede: str, *parts: str) -> str:
    return (f'<section id="{ident}">\n<h2><span class="num">{number}</span> {_e(title)}</h2>\n'
            f'<p class="lede">{lede}</p>\n' + "\n".join(p for p in parts if p) + "\n</section>")


def _figure(story: Story, out_dir: Path, name: str, draw: Callable[[Story, Path], bool],
            alt: str, empty: str) -> str:
    """The figure's <figure>, a "no data" note, or the reason it could not be drawn."""
    path = out_dir / "img" / f"{name}.png"
    path.unlink(missing_ok=True)  # never show a figure left over from an earlier report
    try:
        drawn = draw(story, path)
    except Exception as exc:  # one broken figure must not cost the whole report
        log.warning("report: cannot draw the %s figure", name, exc_info=True)
        return f'<p class="nodata error">This figure could not be drawn: {_e(exc)}</p>'
    if not drawn:
        return _nodata(empty)
    width, height = _png_size(path)
    return (f'<figure><img src="img/{name}.png" alt="{_e(alt)}" width="{width}" '
            f'height="{height}"></figure>')


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR, so the page reserves the space up front."""
    with path.open("rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


# ----------------------------------------------------------------------------- header
def _header(story: Story) -> str:
    """Title, the story in one sentence, five tiles, and the phases as a timed strip."""
    failed = [p.name for p in story.phases if not p.ok]
    banner = (f'<p class="banner">The demo stopped early: {_e(", ".join(failed))} did not '
              "finish. The sections below show what was recorded.</p>" if failed else "")
    total = sum(p.seconds for p in story.phases) or 1.0
    phases = "".join(
        f'<li class="phase {"ok" if p.ok else "failed"}" style="flex-grow:{p.seconds / total:.3f}"'
        f'><span class="pn">{"✓" if p.ok else "✗"} {_e(p.name)}</span>'
        f'<span class="pt">{_e(duration(p.seconds))}</span></li>' for p in story.phases)
    toc = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("training", "Training"), ("canary", "Canary"), ("drift", "Drift"),
        ("lineage", "Lineage"), ("kubectl", "kubectl"), ("where", "Where it ran")))
    return (f'<header class="top"><div class="wrap">\n'
            f'<p class="eyebrow">Trellis · GitOps MLOps on Kubernetes · demo report · '
            f'{_e(story.mode)} mode</p>\n'
            f'<h1>{_e(story.title)}</h1>\n<p class="summary">{_e(_summary(story))}</p>\n'
            f'{banner}<div class="tiles">{_tiles(story)}</div>\n'
            + (f'<ol class="phases">{phases}</ol>\n' if phases else "")
            + f'</div></header>\n<nav class="toc"><div class="wrap">{toc}</div></nav>')


def _moments(story: Story) -> tuple[list[float], list[float]]:
    """When drift was detected, and when it cleared."""
    return ([m.t for m in story.markers if m.kind == "detected"],
            [m.t for m in story.markers if m.kind == "cleared"])


def _summary(story: Story) -> str:
    versions = sum(r.version is not None for r in story.runs)
    outcomes = [r.outcome for r in story.rollouts]
    detected, cleared = _moments(story)
    took = duration(story.duration)
    parts = [f"In {took}, Trellis trained {_n(versions, 'model version')} in "
             f"{_n(len(story.runs), 'Metaflow run')}" if story.runs
             else f"In {took}, no training run finished"]
    if outcomes:
        parts.append(f"promoted {outcomes.count('promoted')} and rolled back "
                     f"{outcomes.count('rolledBack')} by canary analysis")
    if detected:
        parts.append(f"detected drift at {clock(detected[0])}" + (
            f" and cleared it at {clock(cleared[-1])} by retraining"
            if cleared and cleared[-1] > detected[0] else ""))
    if story.mode == "cluster" and not story.stable_now:
        return ", ".join(parts) + (" in pods; serving did not run (it needs Seldon Core's "
                                   "operator).")
    return ", ".join(parts) + (f"; it now serves v{story.stable_now}." if story.stable_now
                               else "; nothing is serving.")


def _tiles(story: Story) -> str:
    serving = next((r for r in story.runs if r.version and r.version == story.stable_now),
                   None)
    note = (f"{story.objective_metric} {serving.accuracy:.3f}"
            if serving and serving.accuracy is not None else "")
    if story.canary_now:
        note = f"canary v{story.canary_now[0]} at {story.canary_now[1]}%"
    outcomes = [r.outcome for r in story.rollouts]
    detected, cleared = _moments(story)
    drift_note = _n(len(story.drift), "check")
    if detected:
        drift_note = (f"cleared {clock(cleared[-1])}" if cleared and cleared[-1] > detected[-1]
                      else "still active")
    serving_tile = ("Now serving", _ver(story.stable_now) if story.stable_now else "nothing",
                    note)
    if _not_run(story, "serving"):
        serving_tile = ("Serving", "not run", "needs Seldon Core's operator")
    tiles = [
        ("Mode", _e(story.mode), "operator and training as pods" if story.mode == "cluster"
         else "processes on this machine"),
        serving_tile,
        ("End to end", _e(duration(story.duration)), _n(len(story.phases), "phase")),
        ("Model versions", str(sum(r.version is not None for r in story.runs)),
         f"from {_n(len(story.runs), 'Metaflow run')}"),
        ("Canary rollouts", f"{outcomes.count('promoted')} ✓ · {outcomes.count('rolledBack')} ✗",
         f"{_n(len(outcomes), 'rollout')}, {_n(len(story.analyses), 'analysis')}"),
        ("Drift", "detected" if detected else "none", drift_note),
    ]
    if _not_run(story, "canary analysis, drift"):
        tiles[-2:] = [("Canary rollouts", "not run", "no serving"),
                      ("Drift", "not run", "no serving")]
    return "".join(f'<div class="tile"><div class="k">{_e(k)}</div><div class="v">{v}</div>'
                   f'<div class="s">{_e(s)}</div></div>' for k, v, s in tiles)


# ---------------------------------------------------------------------------- sections
def _training(story: Story, out_dir: Path) -> str:
    lede = ("One line per Metaflow run of the flow, coloured by the model version it "
            "registered; grey runs registered none (objective not met, or failed ✗).")
    fig = _figure(story, out_dir, "training", plots.training_plot,
                  "Training loss and validation accuracy per epoch for each run",
                  "No training run recorded any epochs.")
    return _section("training", 1, "Training curves per model version", lede, fig)


def _not_run(story: Story, name: str) -> Part | None:
    """The part named ``name`` (or starting with it) when the story says it did not run."""
    return next((p for p in story.parts if not p.ran and p.name.startswith(name)), None)


def _did_not_run(story: Story, ident: str, number: int, title: str, part: Part) -> str:
    return _section(ident, number, title, f"Not run in {_e(story.mode)} mode.",
                    _nodata(f"{part.name}: {part.how}"))


def _canary(story: Story, out_dir: Path) -> str:
    if (part := _not_run(story, "serving")) is not None:
        return _did_not_run(story, "canary", 2, "Canary timeline", part)
    lede = ("Share of live traffic each version received. Markers are the canary analyses "
            "at each step (pass, inconclusive, fail); the panels below show what they "
            "measured.")
    fig = _figure(story, out_dir, "canary", plots.canary_plot,
                  "Traffic weight per model version over time with canary analysis verdicts",
                  "No serving status was recorded.")
    return _section("canary", 2, "Canary timeline", lede, fig, _rollout_table(story.rollouts))


def _rollout_table(rollouts: list[Rollout]) -> str:
    if not rollouts:
        return _nodata("No canary rollout was recorded.")
    rows = []
    for ro in rollouts:
        took = (ro.finished - ro.started if ro.finished is not None and ro.started is not None
                else None)
        rows.append(f"<tr><td>{_ver(ro.version)}</td>"
                    f"<td>{_badge(ro.outcome, OUTCOME_WORDS.get(ro.outcome, ro.outcome))}</td>"
                    f"<td>{clock(ro.started)}</td><td>{clock(ro.finished)}</td>"
                    f'<td class="nowrap">{_e(duration(took))}</td><td>{ro.analyses}</td>'
                    f'<td class="reason">{_e(ro.reason)}</td></tr>')
    return ('<table class="rollouts"><thead><tr><th>Version</th><th>Outcome</th>'
            "<th>Started</th><th>Finished</th><th>Took</th><th>Analyses</th>"
            f"<th>Last verdict</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _drift(story: Story, out_dir: Path) -> str:
    if (part := _not_run(story, "canary analysis, drift")) is not None:
        return _did_not_run(story, "drift", 3, "Drift p-values per feature over time", part)
    features = max((len(c.values) for c in story.drift), default=0)
    if story.drift_test == "psi":
        lede = (f"Population stability index of each live input feature against the serving "
                f"version's reference; drift above {story.drift_threshold:g}.")
    else:
        lede = (f"Kolmogorov–Smirnov test of each live input feature against the serving "
                f"version's training reference; drift when any p-value falls below "
                f"{story.drift_threshold:.2g} (Bonferroni over {features or 'the'} features).")
    fig = _figure(story, out_dir, "drift", plots.drift_plot,
                  "Drift test p-values per feature over time and live accuracy",
                  "No drift check was recorded.")
    moments = [m for m in story.markers if m.kind in ("detected", "retrain", "cleared")]
    first = min((m.t for m in moments), default=None)
    moments += [m for m in story.markers
                if m.kind == "promoted" and first is not None and m.t > first]
    items = "".join(f'<li class="{_e(m.kind)}"><b>{clock(m.t)}</b> {_e(m.label)}</li>'
                    for m in sorted(moments, key=lambda m: m.t))
    return _section("drift", 3, "Drift p-values per feature over time", lede, fig,
                    f'<ul class="moments">{items}</ul>' if items else "")


def _lineage(story: Story) -> str:
    lede = "Every model traced from the git commit it was trained from to where it runs now."
    repo = story.repo
    source = ""
    if repo:
        where = f"{repo.get('url', '')}" + (f" @ {repo['ref']}" if repo.get("ref") else "") + (
            f" : {repo['path']}" if repo.get("path") else "")
        source = (f'<p class="source">SpecRepository <b>{_e(repo.get("name", ""))}</b> '
                  f"<span class=\"mono\">{_e(where)}</span>, synced commit "
                  f'<code>{_e(repo.get("commit", "—")[:7])}</code></p>')
    if not story.runs:
        return _section("lineage", 4, "Lineage", lede, source, _nodata("No run recorded."))
    rows = "".join(
        f"<tr><td><code>{_e(run.commit[:7] or '—')}</code></td>"
        f"<td><code>{_e(run.pathspec)}</code><div class=\"sub\">{clock(run.started)} · "
        f"{_e(duration(_took(run)))}</div></td><td>{_model(run)}</td>"
        f"<td>{'—' if run.accuracy is None else f'{run.accuracy:.3f}'}</td>"
        f"<td>{_trigger(run.trigger)}</td><td>{_fate(story, run)}</td></tr>"
        for run in story.runs)
    table = ('<table class="lineage"><thead><tr><th>Git commit</th><th>Metaflow run</th>'
             f"<th>Model</th><th>{_e(story.objective_metric)}</th><th>Trigger</th>"
             f"<th>Deployment</th></tr></thead><tbody>{rows}</tbody></table>")
    return _section("lineage", 4, "Lineage", lede, source, table)


def _model(run: Run) -> str:
    if run.version is not None:
        return _ver(run.version)
    return _badge("failed", REASON_WORDS.get(run.reason, run.reason or "no model"))


def _took(run: Run) -> float | None:
    if run.started is None or run.finished is None:
        return None
    return run.finished - run.started


def _trigger(trigger: str) -> str:
    if not trigger:
        return _badge("spec", "spec")
    return f'{_badge("drift", "drift")} <span class="mono sub">{_e(trigger)}</span>'


def _fate(story: Story, run: Run) -> str:
    """Where the run's model went: stable spans, rollouts, rejection, current canary."""
    v = run.version
    if v is None:
        return f'<span class="sub">{_e(run.message[:160])}</span>'
    parts: list[str] = []
    mine = [r for r in story.rollouts if r.version == v]
    for ro in mine:
        word = OUTCOME_WORDS.get(ro.outcome, ro.outcome)
        why = f' <span class="sub">{_e(ro.reason[:160])}</span>' if ro.outcome != "promoted" \
            else ""
        parts.append(f"{_badge(ro.outcome, word)} {clock(ro.finished)}{why}")
    if story.canary_now and story.canary_now[0] == v:
        parts.append(_badge("canary", f"canary now at {story.canary_now[1]}%"))
    stable = [p.t for p in story.traffic if p.stable == v]
    if stable:
        since = next((r.finished for r in mine if r.outcome == "promoted"), None) or stable[0]
        if story.stable_now == v:
            parts.append(f"{_badge('stable', 'stable now')} since {clock(since)}")
        else:
            until = next((r.finished for r in story.rollouts if r.outcome == "promoted"
                          and r.finished is not None and r.finished > since), stable[-1])
            parts.append(f"stable {clock(since)} → {clock(until)}")
    if v in story.rejected:
        detail = "" if any(r.outcome == "rolledBack" for r in mine) else \
            f' <span class="sub">{_e(story.rejected[v][:160])}</span>'
        parts.append(f"{_badge('rejected', 'rejected')}{detail}")
    if not parts:
        return _badge("none", "never deployed")
    return "".join(f'<div class="fate">{p}</div>' for p in parts)


def _kubectl(story: Story) -> str:
    text = story.kubectl.strip("\n")
    body = f"<pre>{_e(text)}</pre>" if text else _nodata("Not recorded.")
    return _section("kubectl", 5, "kubectl get mlops",
                    "The same story as the API server tells it, at the end of the demo.", body)


def _where(story: Story) -> str:
    """The mode, each part of the story (ran or not, how or why not), and in cluster
    mode the pods, the Job, the failover and the model's files in S3."""
    lede = ("Local mode runs the operator, training and serving as processes on this "
            "machine; cluster mode runs the operator and training as pods on a real node, "
            "with the models in S3." if story.parts else "Not recorded.")
    rows = "".join(
        f"<tr><td>{_e(p.name)}</td>"
        f"<td>{_badge('promoted', 'ran') if p.ran else _badge('failed', 'not run')}</td>"
        f'<td class="reason">{_e(p.how)}</td></tr>' for p in story.parts)
    table = ('<table class="parts"><thead><tr><th>Part</th><th>Ran</th><th>How, or why not'
             f"</th></tr></thead><tbody>{rows}</tbody></table>" if rows else "")
    return _section("where", 6, f"Where it ran: {story.mode} mode", lede, table,
                    _cluster_facts(story.cluster) if story.mode == "cluster" else "")


def _cluster_facts(facts: dict[str, Any]) -> str:
    if not facts:
        return _nodata("No cluster facts were recorded.")
    out = []
    failover = facts.get("failover") or {}
    pods = ", ".join(f"<code>{_e(n)}</code>" for n in facts.get("operator_pods") or [])
    if pods:
        line = f"Operator replicas: {pods}."
        if failover:
            line += (f" Mid-run, the active one <code>{_e(failover.get('deleted'))}</code> was "
                     f"force-deleted; <code>{_e(failover.get('new_active'))}</code> took over "
                     f"after {_e(duration(failover.get('took_over_after_s')))} (the deleted "
                     f"one's keep-alive {_e(failover.get('keepalive') or 'lapsed')}) and "
                     f"re-attached to the running Job.")
        out.append(f'<p class="source fact">{line}</p>')
    model = facts.get("model") or {}
    if model:
        acc = model.get("accuracy")
        out.append(f'<p class="source fact">Model {_ver(model.get("version"))} from run '
                   f'<code>{_e(model.get("run"))}</code>: accuracy '
                   f'<b>{"—" if acc is None else f"{acc:.3f}"}</b>, source commit '
                   f'<code>{_e(str(model.get("commit") or "—")[:7])}</code>, '
                   f'<span class="mono">{_e(model.get("artifactUri"))}</span>; '
                   f'{_e(facts.get("runs", "?"))} run(s), '
                   f'{_n(len(facts.get("jobs") or []), "Job")}.</p>')
    trainer = "".join(
        f"<tr><td><code>{_e(p.get('name'))}</code></td><td>{_e(p.get('phase'))}</td>"
        f"<td><code>{_e(p.get('image'))}</code></td><td>{_e(p.get('node'))}</td>"
        f"<td>{_e(', '.join(f'{k} {v}' for k, v in (p.get('requests') or {}).items()))}</td>"
        "</tr>" for p in facts.get("pods") or [])
    if trainer:
        out.append('<table><thead><tr><th>Training pod</th><th>Phase</th><th>Image</th>'
                   f"<th>Node</th><th>Requests</th></tr></thead><tbody>{trainer}</tbody>"
                   "</table>")
    s3 = facts.get("s3") or {}
    objects = "".join(f"<tr><td><code>s3://{_e(s3.get('bucket'))}/{_e(o.get('key'))}</code>"
                      f"</td><td>{_e(o.get('size'))}</td></tr>"
                      for o in s3.get("objects") or [])
    if objects:
        out.append("<table><thead><tr><th>Model files in S3</th><th>Bytes</th></tr></thead>"
                   f"<tbody>{objects}</tbody></table>"
                   f'<p class="source">and {_e(s3.get("datastore_objects", 0))} objects of '
                   "Metaflow's datastore.</p>")
    if facts.get("kubectl_get_pods"):
        out.append(f"<pre>$ kubectl get pods -A\n{_e(facts['kubectl_get_pods'].rstrip())}</pre>")
    return "\n".join(out)


def write_markdown(data: dict[str, Any], out_dir: Path) -> Path:
    """``out_dir/report.md``: the mode, what ran, the phases, the models, and in cluster
    mode the pods, the failover and the model's files in S3."""
    story = read_story(data)
    lines = [f"# {story.title}", "", f"Mode: **{story.mode}**. {_summary(story)}", "",
             "| part | ran | how, or why not |", "|---|---|---|"]
    lines += [f"| {p.name} | {'yes' if p.ran else 'no'} | {p.how} |" for p in story.parts]
    lines += ["", "| phase | time | ok |", "|---|---|---|"]
    lines += [f"| {p.name} | {duration(p.seconds)} | {'yes' if p.ok else 'no'} |"
              for p in story.phases]
    lines += ["", f"| run | model | {story.objective_metric} | commit |", "|---|---|---|---|"]
    lines += [f"| {r.pathspec} | {'v' + str(r.version) if r.version else '—'} | "
              f"{'—' if r.accuracy is None else f'{r.accuracy:.3f}'} | {r.commit[:7] or '—'} |"
              for r in story.runs]
    facts = story.cluster
    if story.mode == "cluster" and facts:
        failover = facts.get("failover") or {}
        lines += ["", "## Cluster", "",
                  f"- operator pods: {', '.join(facts.get('operator_pods') or [])}"]
        if failover:
            lines.append(f"- failover: {failover.get('deleted')} force-deleted mid-run; "
                         f"{failover.get('new_active')} took over after "
                         f"{duration(failover.get('took_over_after_s'))} (keep-alive "
                         f"{failover.get('keepalive') or 'lapsed'})")
        model = facts.get("model") or {}
        if model:
            acc = model.get("accuracy")
            lines.append(f"- model v{model.get('version')}: {story.objective_metric} "
                         f"{'—' if acc is None else f'{acc:.3f}'}, source commit "
                         f"{str(model.get('commit') or '—')[:7]}, {model.get('artifactUri')}")
        lines += [f"- Jobs: {', '.join(j['name'] for j in facts.get('jobs') or [])}; "
                  f"runs: {facts.get('runs')}"]
        lines += [f"- training pod {p.get('name')}: {p.get('phase')}, image {p.get('image')}"
                  for p in facts.get("pods") or []]
        s3 = facts.get("s3") or {}
        lines += [f"- S3: s3://{s3.get('bucket')}/{o['key']} ({o['size']} bytes)"
                  for o in s3.get("objects") or []]
        if facts.get("kubectl_get_pods"):
            lines += ["", "```", "$ kubectl get pods -A", facts["kubectl_get_pods"].rstrip(),
                      "```"]
    path = Path(out_dir) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CSS = """
:root{--ink:#1d2327;--muted:#5d666e;--bg:#f4f2ec;--card:#fff;--line:#e3ded3;
--accent:#ee7a1a;--ok:#1a9850;--bad:#d73027;--warn:#f0a020}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
.wrap{max-width:1140px;margin:0 auto;padding:0 28px}
header.top{background:linear-gradient(135deg,#17392d 0%,#10271f 100%);color:#f3f0e8;
padding:30px 0 24px;border-bottom:5px solid var(--accent)}
.eyebrow{margin:0;font-size:12px;letter-spacing:.14em;text-transform:uppercase;color:#f6b26b}
h1{margin:6px 0 8px;font-size:32px;line-height:1.15;letter-spacing:-.01em}
.summary{margin:0 0 20px;max-width:60rem;font-size:16.5px;color:#d5e1d9}
.banner{background:#fbe3df;color:#8b1d13;border-radius:8px;padding:10px 14px;font-weight:600}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.tile{background:rgba(255,255,255,.07);border:1px solid rgba(255,255,255,.13);
border-radius:10px;padding:11px 15px}
.tile .k{font-size:11.5px;letter-spacing:.08em;text-transform:uppercase;color:#aebfb4}
.tile .v{font-size:24px;font-weight:700;margin:2px 0}
.tile .s{font-size:12.5px;color:#aebfb4}
.tile .ver{font-size:20px;padding:0 12px}
.phases{display:flex;flex-wrap:wrap;gap:6px;list-style:none;padding:0;margin:18px 0 0}
.phase{flex-basis:0;min-width:150px;display:flex;flex-direction:column;
background:rgba(255,255,255,.06);border-top:4px solid var(--ok);border-radius:0 0 6px 6px;
padding:6px 10px;font-size:13px}
.phase.failed{border-top-color:var(--bad)}
.phase .pt{color:#aebfb4;font-variant-numeric:tabular-nums}
nav.toc{position:sticky;top:0;z-index:2;background:rgba(244,242,236,.94);
border-bottom:1px solid var(--line)}
nav.toc a{display:inline-block;padding:10px 14px 9px;color:var(--muted);font-weight:600;
text-decoration:none;font-size:14px}
nav.toc a:hover{color:var(--accent)}
section{background:var(--card);border:1px solid var(--line);border-radius:14px;
margin:24px 0;padding:22px 26px;box-shadow:0 1px 3px rgba(30,30,20,.05)}
h2{margin:0 0 4px;font-size:22px;letter-spacing:-.005em}
h2 .num{display:inline-block;width:30px;height:30px;margin-right:6px;border-radius:50%;
background:var(--accent);color:#fff;font-size:16px;line-height:30px;text-align:center;
vertical-align:2px}
.lede{margin:0 0 16px;color:var(--muted);max-width:62rem}
figure{margin:0}
figure img{display:block;width:100%;height:auto}
table{width:100%;border-collapse:collapse;margin-top:16px;font-size:14px}
th{white-space:nowrap;padding:8px 10px;border-bottom:2px solid var(--line);text-align:left;
font-size:11.5px;letter-spacing:.06em;text-transform:uppercase;color:var(--muted)}
td{padding:9px 10px;border-bottom:1px solid var(--line);vertical-align:top}
tbody tr:hover{background:#fbfaf6}
td.nowrap{white-space:nowrap}
td.reason,.sub{color:var(--muted);font-size:13px}
.ver{display:inline-block;padding:1px 10px;border-radius:999px;color:#fff;font-weight:700;
font-size:13.5px}
.badge{display:inline-block;padding:1px 8px;border-radius:6px;font-size:12.5px;font-weight:600;
white-space:nowrap}
.badge.promoted,.badge.stable{background:#e2f3e7;color:#136b3c}
.badge.rolledBack,.badge.rejected,.badge.failed{background:#fbe4e1;color:#a3281d}
.badge.superseded,.badge.none,.badge.spec{background:#eceae4;color:#545b61}
.badge.canary{background:#fff0d9;color:#8a5300}
.badge.drift{background:#f1e8fb;color:#5b2d91}
.fate{margin:1px 0}
code,.mono,pre{font-family:ui-monospace,"SFMono-Regular","DejaVu Sans Mono",monospace}
code{font-size:13px;background:#f1efe9;padding:1px 5px;border-radius:4px}
.mono.sub{font-size:12px}
.source{margin:0;color:var(--muted);font-size:14px}
.source.fact{margin-top:12px}
pre{margin:0;background:#12201a;color:#e3ede6;padding:16px 18px;border-radius:10px;
overflow-x:auto;font-size:12.5px;line-height:1.45}
.nodata{margin:8px 0;padding:16px;border:1px dashed #d6d0c3;border-radius:10px;
background:#faf8f3;color:var(--muted);font-style:italic}
.nodata.error{border-color:#e8a39b;color:#8b1d13}
.moments{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0;margin:14px 0 0}
.moments li{padding:4px 12px;border-left:4px solid #999;border-radius:4px;background:#f7f5f0;
font-size:14px}
.moments li b{font-variant-numeric:tabular-nums;margin-right:4px}
.moments .detected{border-color:#d73027}.moments .retrain{border-color:#6a3d9a}
.moments .promoted{border-color:#1a9850}.moments .cleared{border-color:#2c7bb6}
.muted{color:var(--muted)}
footer{padding:4px 28px 36px;color:var(--muted);font-size:13px}
"""
