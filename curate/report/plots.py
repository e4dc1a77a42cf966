"""PNG plots of a run: each function takes plain data and writes one PNG.

Figures are made with matplotlib's object API (``Figure``, not ``pyplot``), so plotting never
touches the global backend: it works headless and leaves a notebook's inline plots alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
from matplotlib.figure import Figure

COLORS = {
    "kept": "#2a9d8f",
    "rejected": "#e76f51",
    "rejected (other reasons)": "#b8b8b8",
    "all": "#457b9d",
    "samples": "#457b9d",
}
"""Fixed colours for the outcome groups (``rejected: REASON`` takes rejected's); others take matplotlib's cycle."""


def _color(name: str) -> str | None:
    return COLORS.get(name) or (COLORS["rejected"] if name.startswith("rejected: ") else None)


@dataclass
class Panel:
    """One histogram: values per group (stacked), the x label, and vertical lines at (value, label)."""

    xlabel: str
    groups: dict[str, list[float]]
    thresholds: list[tuple[float, str]] = field(default_factory=list)
    log: bool = False  # log-spaced bins and axis, for sizes that span decades


def histograms(panels: Sequence[Panel], title: str, out: str | Path) -> Path:
    """One row of stacked histograms (kept over rejected) with threshold lines, as a PNG."""
    fig = Figure(figsize=(5.5 * len(panels), 3.8), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        _histogram(ax, panel)
    fig.suptitle(title)
    return _save(fig, out)


def _histogram(ax, panel: Panel) -> None:
    groups = {name: values for name, values in panel.groups.items() if values}
    values = [v for vs in groups.values() for v in vs] + [t for t, _ in panel.thresholds]
    if not groups:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    if panel.log and lo > 0:
        bins = np.geomspace(lo, hi, 31)
        ax.set_xscale("log")
    elif hi - lo < 60 and all(float(v).is_integer() for v in values):
        bins = np.arange(lo - 0.5, hi + 1.5)  # one bin per integer (word counts)
    else:
        bins = np.linspace(lo, hi, 31)
    colors = [_color(name) for name in groups]
    ax.hist(list(groups.values()), bins=bins, stacked=True, label=list(groups), color=colors)
    for value, label in panel.thresholds:
        ax.axvline(value, color="black", linestyle="--", linewidth=1.2, label=label)
    ax.set(xlabel=panel.xlabel, ylabel="rows")
    ax.legend(fontsize=8)


def bar_chart(
    labels: Sequence[str | int],
    series: dict[str, Sequence[float]],
    title: str,
    axes: tuple[str, str],
    out: str | Path,
) -> Path:
    """Grouped vertical bars: one group per label, one bar per series; ``axes`` are the (x, y) labels."""
    fig = Figure(figsize=(max(5.0, 0.5 * len(labels) * len(series) + 2), 3.8), dpi=110)
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=_color(name))
    ax.set_xticks(x, [str(label) for label in labels], rotation=45 if len(labels) > 8 else 0)
    ax.set(xlabel=axes[0], ylabel=axes[1], title=title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, out)


def funnel_chart(
    steps: dict[str, int], rejected: Sequence[tuple[str, str, int]], stage_order: Sequence[str], out: str | Path
) -> Path:
    """Left: rows at each step (input → kept). Right: rejections per decide stage, stacked by reason."""
    stages = [s for s in stage_order if any(r[0] == s for r in rejected)]
    stages += sorted({r[0] for r in rejected} - set(stages))
    height = max(3.0, 0.45 * max(len(stages), len(steps)) + 1.5)
    fig = Figure(figsize=(12, height), dpi=110)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.5]})
    names = list(steps)[::-1]
    bars = left.barh(names, [steps[n] for n in names], color=COLORS["all"])
    left.bar_label(bars, padding=2, fontsize=8)
    left.set(title="Rows at each step", xlabel="rows")
    _stacked_rejections(right, stages[::-1], rejected)
    return _save(fig, out)


def _stacked_rejections(ax, stages: list[str], rejected: Sequence[tuple[str, str, int]]) -> None:
    ax.set(title="Rejected, by decide stage and reason", xlabel="rows")
    if not stages:
        ax.text(0.5, 0.5, "nothing rejected", ha="center", va="center", transform=ax.transAxes)
        return
    offset = dict.fromkeys(stages, 0)
    for reason in dict.fromkeys(r[1] for r in rejected):
        widths = [sum(n for s, r, n in rejected if s == stage and r == reason) for stage in stages]
        ax.barh(stages, widths, left=[offset[s] for s in stages], label=reason)
        for stage, w in zip(stages, widths, strict=True):
            offset[stage] += w
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def concept_long_tail(run_dir: str | Path, out: str | Path) -> Path:
    """Log-log rank/count curve of concept counts before and after balancing, as a PNG."""
    from curate.report.stats import connect

    con = connect(run_dir)
    try:
        before, after = _sorted_counts(con)
    finally:
        con.close()
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    ax.loglog(range(1, len(before) + 1), before, label="before balancing")
    ax.loglog(range(1, len(after) + 1), after, label="after balancing")
    ax.set(xlabel="concept rank", ylabel="rows matching the concept", title="Concept long tail")
    ax.legend()
    return _save(fig, out)


def _sorted_counts(con: duckdb.DuckDBPyConnection) -> tuple[list[int], list[int]]:
    rows = con.execute(
        """SELECT count(*), count(*) FILTER (WHERE keep) FROM (
               SELECT unnest(s.concept_ids) AS concept, d.keep FROM samples s JOIN decisions d USING (key)
               WHERE d.keep OR d.reason IN ('balanced_out', 'no_concept'))
           GROUP BY concept"""
    ).fetchall()
    return sorted((b for b, _ in rows), reverse=True), sorted((a for _, a in rows if a), reverse=True)


def _save(fig: Figure, out: str | Path) -> Path:
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
