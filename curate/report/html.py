"""``RUN/report/report.html``: one self-contained page (PNGs embedded as data URIs) plus the PNG files.

Each section is a function of the run that returns ``None`` when its step or stage did not run, so
a partial run gets a shorter report, never a broken one. The report folder is built under
``RUN/.tmp`` and swapped in whole.
"""

from __future__ import annotations

import base64
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path

import duckdb

from curate import reasons, storage
from curate.io import replace_dir
from curate.manifest import Manifest
from curate.report import grid, plots, stats, status

KEPT_CARDS = 24
REJECTED_CARDS_PER_REASON = 8
TOP_LANGUAGES = 20
DEDUP_POLICIES = ("exact_dedup", "near_dedup", "semantic_dedup", "decontaminate")


@dataclass
class Context:
    """What every section reads: the run, an open DuckDB over it, its manifest, and where PNGs go."""

    run_dir: str
    out: Path
    con: duckdb.DuckDBPyConnection
    manifest: dict
    columns: set[str]  # of samples
    decided: bool

    def figure(self, png: Path, caption: str) -> str:
        """An <img> of ``png`` embedded as a data URI, with a caption."""
        data = base64.b64encode(png.read_bytes()).decode()
        return (
            f'<figure class="plot"><img src="data:image/png;base64,{data}" alt="{escape(png.stem)}">'
            f"<figcaption>{escape(caption)} <code>{escape(png.name)}</code></figcaption></figure>"
        )


@dataclass
class Section:
    """A titled part of the page; ``id`` is its anchor."""

    id: str
    title: str
    body: str


def write_report(run_dir: str | Path) -> Path | str:
    """Write ``RUN/report/`` (report.html and the PNG plots), replacing an older report; return the HTML path.

    On object storage the report is built in a local scratch folder, uploaded under ``RUN/.tmp/`` and committed.
    """
    run_dir = str(run_dir)
    local = storage.is_local(run_dir)
    name = f"report-{uuid.uuid4().hex[:8]}"
    tmp = Path(storage.local_path(run_dir), ".tmp", name) if local else Path(storage.local_tmp(), name)
    tmp.mkdir(parents=True)
    try:
        with stats.opened(run_dir) as con:
            ctx = Context(
                run_dir,
                tmp,
                con,
                Manifest(run_dir).data,
                stats.columns(con, "samples"),
                bool(stats.columns(con, "decisions")),
            )
            sections = [s for s in (build(ctx) for build in SECTIONS) if s is not None]
        (tmp / "report.html").write_text(page(run_dir, ctx.manifest, sections), encoding="utf-8")
        if local:
            replace_dir(tmp, Path(storage.local_path(run_dir), "report"))
        else:
            staged = storage.join(run_dir, ".tmp", name)
            storage.upload_dir(tmp, staged)
            storage.commit_dir(staged, storage.join(run_dir, "report"))
    finally:
        shutil.rmtree(tmp if local else tmp.parent, ignore_errors=True)
    return (
        Path(storage.local_path(run_dir), "report", "report.html")
        if local
        else storage.join(run_dir, "report", "report.html")
    )


def overview(ctx: Context) -> Section:
    """The recipe and every step's status, time and counts."""
    recipe = ctx.manifest.get("recipe", {})
    intro = f"<p>Recipe <b>{escape(str(recipe.get('name', '?')))}</b>: {escape(str(recipe.get('description', '')))}</p>"
    # the report is being written now: a "report" step, if the run records one, is not news
    order = [step for step in status.step_order() if step != "report"]
    manifest = {**ctx.manifest, "steps": {k: v for k, v in ctx.manifest.get("steps", {}).items() if k != "report"}}
    rows = status.step_rows(manifest, order)
    lines = status.where_it_stands(ctx.run_dir, manifest, order)
    notes = "".join(f"<p>{escape(line)}</p>" for line in lines)
    return Section("overview", "Run", intro + table(rows) + notes)


def funnel(ctx: Context) -> Section | None:
    """Rows at each step, and rejections by decide stage and reason."""
    if not (ctx.decided and ctx.columns):
        return None
    result = stats.funnel(ctx.run_dir)
    order = ["availability", *(p["policy"] for p in ctx.manifest.get("recipe", {}).get("decide", []))]
    png = plots.funnel_chart(result["steps"], stats.rejections_by_stage(ctx.con), order, ctx.out / "funnel.png")
    meaning = [(r, n, reasons.REASONS.get(r, "")) for r, n in result["rejected"].items()]
    body = ctx.figure(png, "Where rows were dropped.") + table(stats.Rows(["reason", "rows", "meaning"], meaning))
    return Section("funnel", "Funnel: what was kept, what was dropped and why", body)


def clip_scores(ctx: Context) -> Section | None:
    """Histogram of CLIP scores, kept over rejected, with the recipe's threshold."""
    if "clip_score" not in ctx.columns:
        return None
    thresholds = stats.clip_thresholds(ctx.con, ctx.manifest) if ctx.decided else []
    values = stats.values_by_outcome(ctx.con, "s.clip_score", ["low_clip_score"])
    panel = plots.Panel("CLIP score (image-caption cosine)", values, thresholds)
    png = plots.histograms([panel], "CLIP score", ctx.out / "clip_score.png")
    return Section(
        "clip-score", "CLIP score", ctx.figure(png, "Dashed: the threshold.") + table(stats.scores(ctx.run_dir))
    )


def learned_scores(ctx: Context) -> Section | None:
    """Histograms of each head or classifier score, kept over rejected by its reason, with the cut."""
    cuts = stats.score_cuts(ctx.manifest, ctx.con) if ctx.decided else []
    if not cuts:
        return None
    panels = [
        plots.Panel(
            c.get("label", f"{c['reason']} score"),
            stats.values_by_outcome(ctx.con, c["expr"], [c["reason"]]),
            c["lines"],
        )
        for c in cuts
    ]
    png = plots.histograms(panels, "Learned scores", ctx.out / "learned_scores.png")
    return Section("heads", "Learned scores", ctx.figure(png, "Dashed: the cut.") + table(stats.heads(ctx.run_dir)))


def caption_length(ctx: Context) -> Section | None:
    """Histograms of caption characters (and words, when the caption stage ran), with thresholds."""
    if not ctx.columns:
        return None
    entry = stats.policy(ctx.manifest, "caption_length") or {}
    chars = "s.caption_chars" if "caption_chars" in ctx.columns else "length(s.caption)"
    lines = [(entry[k], f"{k} {entry[k]}") for k in ("min_chars", "max_chars") if entry.get(k)]
    cut = ["caption_short", "caption_long"]
    panels = [plots.Panel("caption characters", stats.values_by_outcome(ctx.con, chars, cut), lines)]
    if "caption_words" in ctx.columns:
        words = [(entry["min_words"], f"min_words {entry['min_words']}")] if entry.get("min_words") else []
        panels.append(plots.Panel("caption words", stats.values_by_outcome(ctx.con, "s.caption_words", cut), words))
    png = plots.histograms(panels, "Caption length", ctx.out / "caption_length.png")
    return Section("caption-length", "Caption length", ctx.figure(png, "Dashed: the recipe's limits."))


def image_sides(ctx: Context) -> Section | None:
    """Histograms of the shorter and the longer image side, with ``min_side``."""
    if not {"width", "height"} <= ctx.columns:
        return None
    entry = stats.policy(ctx.manifest, "image_size") or {}
    lines = [(entry["min_side"], f"min_side {entry['min_side']}")] if entry.get("min_side") else []
    cut = ["too_small", "too_large", "bad_aspect"]
    shorter = stats.values_by_outcome(ctx.con, "least(s.width, s.height)", cut)
    longer = stats.values_by_outcome(ctx.con, "greatest(s.width, s.height)", cut)
    panels = [
        plots.Panel("shorter side (px)", shorter, lines, log=True),
        plots.Panel("longer side (px)", longer, log=True),
    ]
    png = plots.histograms(panels, "Image sides", ctx.out / "image_sides.png")
    return Section("image-sides", "Image sides", ctx.figure(png, "Decoded images; dashed: the recipe's minimum."))


def languages(ctx: Context) -> Section | None:
    """Bar chart of caption languages: all rows and kept rows."""
    if "lang" not in ctx.columns:
        return None
    rows = stats.languages(ctx.run_dir).rows[:TOP_LANGUAGES]
    series = {"samples": [r[1] for r in rows]}
    if ctx.decided:
        series["kept"] = [r[2] for r in rows]
    png = plots.bar_chart(
        [r[0] for r in rows], series, "Caption language", ("language", "rows"), ctx.out / "languages.png"
    )
    return Section("languages", "Languages", ctx.figure(png, f"The {TOP_LANGUAGES} most common languages."))


def concepts(ctx: Context) -> Section | None:
    """The concept long tail before and after balancing, and the head concepts."""
    if not (ctx.decided and "concept_ids" in ctx.columns):
        return None
    png = plots.concept_long_tail(ctx.run_dir, ctx.out / "concepts.png")
    return Section("concepts", "Concepts", ctx.figure(png, "Rank/count, log-log.") + table(stats.concepts(ctx.run_dir)))


def duplicates(ctx: Context) -> Section | None:
    """Bar chart of duplicate cluster sizes per dedup reason."""
    if not ctx.decided:
        return None
    result = stats.duplicates(ctx.run_dir)
    rows = result.rows
    if not rows:
        ran = [p for p in DEDUP_POLICIES if stats.policy(ctx.manifest, p)]
        return Section("duplicates", "Duplicates", "<p>No duplicates found.</p>") if ran else None
    sizes = sorted({size for _, size, _ in rows})
    series = {
        reason: [sum(n for r, s, n in rows if r == reason and s == size) for size in sizes]
        for reason in dict.fromkeys(r for r, _, _ in rows)
    }
    axes = ("cluster size (kept row + its duplicates)", "clusters")
    png = plots.bar_chart(sizes, series, "Duplicate clusters", axes, ctx.out / "duplicates.png")
    return Section("duplicates", "Duplicates", ctx.figure(png, "Clusters by size.") + table(result))


def captions(ctx: Context) -> Section | None:
    """With recaption: how many kept samples train on each caption, and examples side by side."""
    kept = stats.columns(ctx.con, "kept")
    if "caption_synthetic" not in kept:
        return None
    scored = "clip_score_synthetic" in kept
    scores = (
        ", round(clip_score_alt, 3) AS alt_score, round(clip_score_synthetic, 3) AS synthetic_score" if scored else ""
    )
    counts = ctx.con.sql("SELECT caption_source, count(*) FROM kept GROUP BY 1 ORDER BY 1").fetchall()
    examples = ctx.con.sql(
        f"SELECT key, caption_source AS used, caption_alt, caption_synthetic{scores} FROM kept ORDER BY key LIMIT 12"
    )
    summary = ", ".join(f"{source}: {n}" for source, n in counts)
    body = f"<p>Caption trained on, per kept sample: {escape(summary)}.</p>"
    body += table(stats.Rows(examples.columns, examples.fetchall()))
    return Section("captions", "Captions: alt text and synthetic", body)


def kept_samples(ctx: Context) -> Section | None:
    """A grid of kept samples."""
    if not ctx.decided:
        return None
    rows = stats.grid_rows(ctx.con, True, KEPT_CARDS)
    return Section(
        "kept",
        "Kept samples",
        grid.cards(ctx.run_dir, rows, grid.decode_limit(ctx.manifest)) if rows else "<p>Nothing was kept.</p>",
    )


def rejected_samples(ctx: Context) -> Section | None:
    """A grid of rejected samples for each reason (a URL and the error where there is no image)."""
    if not ctx.decided:
        return None
    rows = stats.grid_rows(ctx.con, False, REJECTED_CARDS_PER_REASON)
    if not rows:
        return None
    parts = []
    for reason in dict.fromkeys(r["reason"] for r in rows):
        meaning = escape(reasons.REASONS.get(reason, ""))
        picked = [r for r in rows if r["reason"] == reason]
        parts.append(f'<h3><code>{escape(reason)}</code></h3><p class="meaning">{meaning}</p>')
        parts.append(grid.cards(ctx.run_dir, picked, grid.decode_limit(ctx.manifest)))
    return Section("rejected", "Rejected samples, by reason", "".join(parts))


SECTIONS: tuple[Callable[[Context], Section | None], ...] = (
    overview,
    funnel,
    clip_scores,
    learned_scores,
    caption_length,
    image_sides,
    languages,
    concepts,
    duplicates,
    captions,
    kept_samples,
    rejected_samples,
)
"""The report's sections, in page order."""


def table(rows: stats.Rows) -> str:
    """An HTML table of ``rows``, every cell escaped."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in rows.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape('' if v is None else str(v))}</td>" for v in row) + "</tr>" for row in rows.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(run_dir: str, manifest: dict, sections: list[Section]) -> str:
    """The whole HTML document: inline CSS, no script, no external reference."""
    name = escape(str(manifest.get("recipe", {}).get("name", "run")))
    nav = " · ".join(f'<a href="#{s.id}">{escape(s.title.split(":")[0])}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections)
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>curate report: {escape(storage.name(run_dir))}</title><style>{CSS}</style></head>'
        f"<body><header><h1>{escape(storage.name(run_dir))} <small>recipe {name}</small></h1><nav>{nav}</nav></header>"
        f"<main>{body}</main><footer>Written by curate report at {made}.</footer></body></html>"
    )


CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5em; color: #222; }
header { border-bottom: 1px solid #ddd; } h1 small { font-weight: normal; color: #666; font-size: 60%; }
nav a { color: #1d5f8a; } section { margin: 2em 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
figure.plot img { max-width: 100%; height: auto; } figcaption { color: #555; font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.card { margin: 0; border: 1px solid #ddd; border-radius: 4px; padding: 5px; overflow-wrap: anywhere; }
.card img { display: block; margin: 0 auto 4px; height: 120px; max-width: 100%; object-fit: contain;
            image-rendering: pixelated; }
.card .meta { display: block; font-family: monospace; font-size: 11px; color: #333; }
.noimg { height: 120px; background: #f6eeee; color: #933; font-size: 12px; padding: 4px; overflow: hidden; }
.noimg .url { display: block; color: #666; font-family: monospace; font-size: 11px; margin-top: 4px; }
.meaning { color: #555; } footer { color: #888; font-size: 12px; margin: 3em 0 1em; }
"""
