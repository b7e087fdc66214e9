"""The report's figures, drawn with matplotlib's object API into PNG files.

No pyplot: figures are plain ``Figure`` objects, so drawing needs no display, holds no
global state and leaks nothing between calls. Each function draws one section from a
``Story`` and returns False when there is nothing to draw, so the page can say so.
Colours are fixed per model version across every figure and the HTML (``version_colour``)
so "v3" is the same pink everywhere; verdicts keep green/amber/red, which no version uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from controller.demo.timeline import Marker, Story, clock

VERSION_COLOURS = ("#0072B2", "#E69F00", "#CC79A7", "#7E57C2", "#56B4E9", "#8C6D31",
                   "#999933", "#44AA99")
NO_VERSION = "#9a9a9a"
VERDICTS = {"pass": ("#1a9850", "o"), "fail": ("#d73027", "X"),
            "inconclusive": ("#f0a020", "D")}
MARKERS = {"detected": ("#d73027", "-"), "retrain": ("#6A3D9A", "--"),
           "promoted": ("#1a9850", "--"), "rolledBack": ("#d73027", ":"),
           "superseded": ("#777777", ":"), "cleared": ("#2c7bb6", "-.")}
SHORT = {"detected": "drift detected", "retrain": "retrain", "cleared": "cleared"}
FEATURE_COLOURS = ("#d73027", "#fc8d59", "#7b3294", "#2c7bb6", "#1a9850", "#8c510a")
STYLE: dict[Any, Any] = {
    "font.size": 10.5, "axes.titlesize": 11.5, "axes.titleweight": "bold",
    "axes.titlelocation": "left", "axes.labelsize": 10, "axes.labelcolor": "#333333",
    "axes.edgecolor": "#b0b0b0", "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.8,
    "xtick.color": "#555555", "ytick.color": "#555555", "legend.frameon": False,
    "legend.fontsize": 9.5, "figure.facecolor": "white", "axes.facecolor": "white",
}
DPI = 110


def version_colour(version: int | None) -> str:
    if version is None or version < 1:
        return NO_VERSION
    return VERSION_COLOURS[(version - 1) % len(VERSION_COLOURS)]


def _new(height: float, rows: Sequence[float]) -> tuple[Figure, list[Axes]]:
    """A time-axis figure with fixed margins, so every such figure's axes line up."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(10.0, height))
        fig.subplots_adjust(left=0.085, right=0.985, top=1 - 0.42 / height,
                            bottom=0.62 / height, hspace=0.12)
        axes = fig.subplots(len(rows), 1, sharex=True, height_ratios=list(rows), squeeze=False)
    return fig, list(axes[:, 0])


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, pil_kwargs={"optimize": True})


def _time_axis(ax: Axes, story: Story) -> None:
    """Minutes since the start, ticked in the report's ``+m:ss`` clock."""
    ax.set_xlim(0, max(story.duration, 60.0) / 60)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: clock(x * 60)))
    ax.set_xlabel("time since the demo started (min:s)")


def _mark(axes: Sequence[Axes], markers: Iterable[Marker]) -> None:
    """Vertical lines through every panel; labels on the top one, stacked when crowded."""
    top = axes[0]
    lo, hi = top.get_xlim()
    rows: list[list[tuple[float, float]]] = []  # per label row, the x spans already taken
    for m in sorted(markers, key=lambda m: m.t):
        colour, style = MARKERS.get(m.kind, ("#555555", ":"))
        x = m.t / 60
        for ax in axes:
            ax.axvline(x, color=colour, linestyle=style, linewidth=1.4, alpha=0.9, zorder=1)
        text = SHORT.get(m.kind, m.label)
        width = (hi - lo) * (0.02 + 0.0115 * len(text))
        right = x + width > hi  # no room on the right: the label hangs left of its line
        span = (x - width, x) if right else (x, x + width)
        row = next((i for i, taken in enumerate(rows)
                    if all(span[1] < a or span[0] > b for a, b in taken)), len(rows))
        if row == len(rows):
            rows.append([])
        rows[row].append(span)
        top.annotate(text, (x, 1 - 0.085 * row), xycoords=("data", "axes fraction"),
                     xytext=(-4 if right else 4, -2), textcoords="offset points",
                     ha="right" if right else "left", va="top", fontsize=9, color=colour,
                     fontweight="bold", zorder=6,
                     bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                           "alpha": 0.85})


def _legend(ax: Axes, ncol: int, handles: list[Line2D] | None = None) -> None:
    """One row above the panel (the section's heading is its title): the plot keeps its
    full width, so the time axes of the canary and drift figures line up."""
    extra = {"handles": handles} if handles is not None else {}
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), borderaxespad=0.3, ncol=ncol,
              columnspacing=1.2, handlelength=1.6, **extra)


def training_plot(story: Story, path: Path) -> bool:
    """Loss and validation accuracy per epoch, one line per Metaflow run."""
    runs = [r for r in story.runs if r.epochs]
    if not runs:
        return False
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(10.0, 3.9), layout="constrained")
        loss_ax, acc_ax = fig.subplots(1, 2)
        for run in runs:
            epochs = [e["epoch"] for e in run.epochs]
            number = run.pathspec.rsplit("/", 1)[-1]
            if run.version is not None:
                style: dict[str, Any] = {"color": version_colour(run.version), "linestyle": "-",
                               "marker": "o", "linewidth": 2.2, "markersize": 4.5}
                label = f"v{run.version} · run {number}" + (" (drift retrain)"
                                                            if run.trigger else "")
            else:
                failed = run.reason in ("RunFailed", "RunLost")
                style = {"color": NO_VERSION, "linestyle": ":" if failed else "--",
                         "marker": "x", "linewidth": 1.6, "markersize": 5}
                label = f"run {number} · {'failed' if failed else 'objective not met'}"
            for ax, key in ((loss_ax, "loss"), (acc_ax, "val_accuracy")):
                ys = [e.get(key, np.nan) for e in run.epochs]
                ax.plot(epochs, ys, label=label if ax is loss_ax else None, **style)
                if run.reason in ("RunFailed", "RunLost"):
                    ax.plot(epochs[-1:], ys[-1:], marker="X", color=VERDICTS["fail"][0],
                            markersize=9, linestyle="none", zorder=5)
        if story.objective_threshold is not None and "acc" in story.objective_metric:
            acc_ax.axhline(story.objective_threshold, color="#444444", linestyle="--",
                           linewidth=1.1)
            acc_ax.annotate(f"objective: {story.objective_metric} ≥ "
                            f"{story.objective_threshold:g}",
                            (0.01, story.objective_threshold), xycoords=("axes fraction", "data"),
                            xytext=(0, 3), textcoords="offset points", ha="left", va="bottom",
                            fontsize=9, color="#444444")
        loss_ax.set(title="Training loss", xlabel="epoch", ylabel="loss")
        acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
        for ax in (loss_ax, acc_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.legend(loc="outside lower center", ncol=min(3, len(runs)))
    _save(fig, path)
    return True


def _version_share(story: Story, version: int) -> np.ndarray:
    """The share of traffic ``version`` got at each sample, NaN while it was not served."""
    out = []
    for p in story.traffic:
        if p.canary == version:
            out.append(float(p.weight))
        elif p.stable == version:
            out.append(100.0 - (p.weight if p.canary is not None else 0.0))
        else:
            out.append(np.nan)
    return np.asarray(out)


def canary_plot(story: Story, path: Path) -> bool:
    """Traffic per version (steps), analysis verdicts on it, error rate and p99 below."""
    served = sorted({v for p in story.traffic for v in (p.stable, p.canary) if v} |
                    {a.version for a in story.analyses})
    if not served:
        return False
    panels = [3.0, 1.25, 1.25] if story.analyses else [3.0]
    fig, axes = _new(6.6 if story.analyses else 3.6, panels)
    with matplotlib.rc_context(STYLE):
        top = axes[0]
        _time_axis(axes[-1], story)
        x = np.asarray([p.t for p in story.traffic]) / 60
        handles = []
        for v in served:
            share, colour = _version_share(story, v), version_colour(v)
            if len(x):
                top.step(x, share, where="post", color=colour, linewidth=2.4)
                top.fill_between(x, share, step="post", color=colour, alpha=0.13,
                                 where=~np.isnan(share))
            handles.append(Line2D([], [], color=colour, linewidth=2.4, label=f"v{v}"))
        for ro in story.rollouts:
            if ro.started is not None:
                end = ro.finished if ro.finished is not None else story.duration
                top.axvspan(ro.started / 60, end / 60, color=version_colour(ro.version),
                            alpha=0.06, zorder=0)
        for verdict, (colour, shape) in VERDICTS.items():
            mine = [a for a in story.analyses if a.verdict == verdict]
            if mine:
                top.scatter([a.t / 60 for a in mine], [a.weight for a in mine],
                            s=120 if verdict == "fail" else 70,
                            marker=shape, color=colour, edgecolor="white", linewidth=1.2,
                            zorder=5)
                handles.append(Line2D([], [], marker=shape, color=colour, linestyle="none",
                                      markersize=8, label=f"analysis: {verdict}"))
        top.set_ylim(-4, 128)
        top.set_yticks([0, 25, 50, 75, 100])
        top.set_ylabel("traffic share %")
        _legend(top, len(handles), handles)
        if story.analyses:
            _metric_panel(axes[1], story, "error rate %", "errorRate", 100.0)
            _metric_panel(axes[2], story, "p99 latency ms", "p99", 1.0)
        _mark(axes, [m for m in story.markers
                     if m.kind in ("promoted", "rolledBack", "superseded")])
    _save(fig, path)
    return True


def _metric_panel(ax: Axes, story: Story, label: str, limit_key: str, scale: float) -> None:
    """One analysis metric per rollout step; the policy's limit drawn when it is in view."""
    top_value = 0.0
    for v in sorted({a.version for a in story.analyses}):
        points = [(a.t / 60, value * scale) for a in story.analyses if a.version == v
                  and (value := a.error_rate if limit_key == "errorRate" else a.p99_ms)
                  is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", color=version_colour(v), linewidth=1.6, markersize=5)
            top_value = max(top_value, *ys)
    limit = story.limits.get(limit_key)
    ceiling = max(top_value * 1.25, 1e-3)
    if limit is not None:
        shown = limit * scale
        if shown <= 1.6 * top_value:  # a limit far above the data would flatten it
            ax.axhline(shown, color=VERDICTS["fail"][0], linestyle="--", linewidth=1.1)
            ceiling = max(ceiling, shown * 1.1)
        unit = " %" if limit_key == "errorRate" else " ms"
        ax.annotate(f"limit {shown:g}{unit}", (0.005, 0.92), xycoords="axes fraction",
                    ha="left", va="top", fontsize=8.5, color=VERDICTS["fail"][0])
    ax.set_ylim(0, ceiling)
    ax.set_ylabel(label)


def drift_plot(story: Story, path: Path) -> bool:
    """Per-feature test value over time against the corrected threshold; live accuracy."""
    if not story.drift:
        return False
    accuracy = [(c.t / 60, c.live_accuracy) for c in story.drift if c.live_accuracy is not None]
    fig, axes = _new(5.9 if accuracy else 4.2, [3.0, 1.3] if accuracy else [3.0])
    psi = story.drift_test == "psi"
    with matplotlib.rc_context(STYLE):
        top = axes[0]
        _time_axis(axes[-1], story)
        names = sorted({n for c in story.drift for n in c.values})

        def worst(name: str) -> float:
            vals = [c.values[name] for c in story.drift if name in c.values]
            return -max(vals) if psi else min(vals)

        ranked = sorted(names, key=worst)
        loud = [n for n in ranked if (-worst(n) > story.drift_threshold if psi
                                      else worst(n) < story.drift_threshold)]
        loud = loud[:len(FEATURE_COLOURS)]
        quiet_labelled = False
        for name in [*loud, *(n for n in names if n not in loud)]:
            pts = [(c.t / 60, c.values[name]) for c in story.drift if name in c.values]
            xs, ys = zip(*pts, strict=True)
            ys_arr = np.asarray(ys) if psi else np.clip(ys, 1e-12, None)
            if name in loud:
                top.plot(xs, ys_arr, color=FEATURE_COLOURS[loud.index(name)], linewidth=2.2,
                         label=name, zorder=3)
            else:
                top.plot(xs, ys_arr, color="#b9b9b9", linewidth=1.0, zorder=2,
                         label=None if quiet_labelled else "other features")
                quiet_labelled = True
        for start, end in _spans(story):
            top.axvspan(start / 60, end / 60, color="#d73027", alpha=0.07, zorder=0)
        what = (f"PSI threshold {story.drift_threshold:g}" if psi else
                f"p < {story.drift_threshold:.2g} (Bonferroni)")
        top.axhline(story.drift_threshold, color="#d73027", linestyle="--", linewidth=1.3,
                    label=what, zorder=4)
        if psi:
            top.set_ylabel("PSI (higher = more drift)")
        else:
            top.set_yscale("log")
            floor = min(min(min(c.values.values(), default=1.0) for c in story.drift),
                        story.drift_threshold)
            top.set_ylim(max(floor, 1e-12) / 5, 1e3)
            top.set_ylabel("KS p-value (lower = more drift)")
        _legend(top, len(loud) + 2)
        if accuracy:
            acc_ax = axes[1]
            xs, ys = zip(*accuracy, strict=True)
            acc_ax.plot(xs, ys, color="#333333", linewidth=2.0, label="live accuracy")
            if story.min_accuracy is not None:
                acc_ax.axhline(story.min_accuracy, color="#d73027", linestyle="--",
                               linewidth=1.1, label=f"minimum {story.min_accuracy:g}")
            acc_ax.set_ylim(min(0.5, min(ys) - 0.05), 1.0)
            acc_ax.set_ylabel("live accuracy")
            acc_ax.legend(loc="lower left", ncol=2)
        first = min((m.t for m in story.markers if m.kind == "detected"), default=None)
        _mark(axes, [m for m in story.markers if m.kind in ("detected", "retrain", "cleared")
                     or (m.kind == "promoted" and first is not None and m.t > first)])
    _save(fig, path)
    return True


def _spans(story: Story) -> list[tuple[float, float]]:
    """Stretches of consecutive checks that reported drift."""
    spans: list[tuple[float, float]] = []
    start = None
    for check in story.drift:
        if check.detected and start is None:
            start = check.t
        elif not check.detected and start is not None:
            spans.append((start, check.t))
            start = None
    if start is not None:
        spans.append((start, story.drift[-1].t))
    return spans
