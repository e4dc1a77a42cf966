"""Inspecting a run: the HTML report and its plots, canned stats queries, `curate status`.

Uses the session's demo run (`curated_shards`), and copies of it with extra signals or with
steps removed; copies link raw/ instead of copying it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curate.cli import app
from curate.decide import decide
from curate.recipe import POLICIES
from curate.report import stats
from curate.report.html import write_report
from curate.report.status import step_order

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
DEMO_PLOTS = {"funnel", "caption_length", "image_sides", "languages", "duplicates"}
ALL_PLOTS = DEMO_PLOTS | {"clip_score", "concepts"}
MARKUP = ' <script>alert("x")</script> & <b>bold</b>'


@pytest.fixture(scope="module")
def run_dir(curated_shards) -> Path:
    return curated_shards.parent


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    return write_report(run_dir)


def copy_run(run_dir: Path, dest: Path, parts=("samples", "decisions")) -> Path:
    """The manifest and ``parts`` of a run copied to ``dest``; raw/ linked."""
    dest.mkdir(parents=True)
    shutil.copy(run_dir / "manifest.json", dest)
    (dest / "raw").symlink_to(run_dir / "raw")
    for part in parts:
        shutil.copytree(run_dir / part, dest / part)
    return dest


@pytest.fixture(scope="module")
def rich_run(run_dir, tmp_path_factory) -> Path:
    """The demo run plus CLIP scores, concepts and some German/French captions (with markup), decided
    again by the real policies with clip_score and balance added (DuckDB only, no Ray)."""
    run = copy_run(run_dir, tmp_path_factory.mktemp("rich") / "run", parts=())
    samples = pq.read_table(run_dir / "samples")
    rng = np.random.default_rng(0)
    n = len(samples)
    concepts = [sorted({int(c) % 40 for c in rng.zipf(1.6, rng.integers(1, 4))}) for _ in range(n)]
    lang = [("de" if i % 13 == 0 else "fr" if i % 17 == 0 else v) for i, v in enumerate(samples["lang"].to_pylist())]
    samples = (
        samples.append_column("clip_score", pa.array(rng.uniform(0.05, 0.45, n), pa.float32()))
        .append_column("concept_ids", pa.array(concepts, pa.list_(pa.int32())))
        .set_column(samples.column_names.index("lang"), "lang", pa.array(lang))
        .set_column(
            samples.column_names.index("caption"),
            "caption",
            pc.binary_join_element_wise(samples["caption"], MARKUP, ""),
        )
    )
    (run / "samples").mkdir()
    pq.write_table(samples, run / "samples" / "part.parquet")
    manifest = json.loads((run / "manifest.json").read_text())
    entries = [
        *manifest["recipe"]["decide"],
        {"policy": "clip_score", "min_score": 0.15},
        {"policy": "balance", "t": 25},
    ]
    policies = [
        POLICIES[e["policy"]](POLICIES[e["policy"]].Config(**{k: v for k, v in e.items() if k != "policy"}))
        for e in entries
    ]
    info: dict = {}
    decide(str(run / "samples" / "*.parquet"), policies, run / "decisions", None, info)
    manifest["recipe"]["decide"] = entries
    manifest["steps"]["decide"]["policies"] = info
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def pngs(report_html: Path) -> dict[str, Path]:
    return {p.stem: p for p in report_html.parent.glob("*.png")}


def section_ids(report_html: Path) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', report_html.read_text())


# --- the report -------------------------------------------------------------------------------


def test_report_has_a_readable_embedded_png_for_each_step_that_ran(report):
    html = report.read_text()
    found = pngs(report)
    assert set(found) == DEMO_PLOTS  # no CLIP or concept plot: those stages did not run
    for png in found.values():
        data = png.read_bytes()
        with Image.open(png) as img:
            img.verify()
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 200 and img.height > 200
        assert base64.b64encode(data).decode() in html  # the page carries its own copy
    assert section_ids(report) == [
        "overview",
        "funnel",
        "caption-length",
        "image-sides",
        "languages",
        "duplicates",
        "kept",
        "rejected",
    ]


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.refs += [
            v or "" for k, v in attrs if k in {"src", "href", "srcset", "action", "data", "poster", "xlink:href"}
        ]


def test_report_references_nothing_outside_itself(report):
    html = report.read_text()
    parser = _References()
    parser.feed(html)
    assert parser.refs and all(ref.startswith(("data:", "#")) for ref in parser.refs)
    assert "script" not in parser.tags and "iframe" not in parser.tags
    assert not re.search(r"url\(|@import", html)


def test_rejected_samples_show_each_reason_and_urls_where_there_is_no_image(report, run_dir):
    html = report.read_text()
    result = stats.funnel(run_dir)
    for reason in result["rejected"]:
        assert f"<h3><code>{reason}</code></h3>" in html
    assert html.count('class="noimg"') >= 2  # failed downloads and undecodable bytes: text cards
    missing = duckdb.sql(
        f"SELECT d.url FROM read_parquet('{run_dir}/decisions/*.parquet') d WHERE d.reason = 'download_error'"
    ).fetchall()
    assert any(url in html for (url,) in missing)


def test_thumbnails_obey_the_runs_recorded_decode_limit(run_dir, tmp_path):
    """A run whose image stage ran with max_decode_pixels below every image: no card decodes one."""
    run = copy_run(run_dir, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    image_stage = next(s for s in manifest["recipe"]["annotate"] if s["stage"] == "image")
    image_stage["max_decode_pixels"] = 1
    (run / "manifest.json").write_text(json.dumps(manifest))
    html = write_report(run).read_text()
    assert 'class="card"><img' not in html
    assert "exceeds max_decode_pixels (1)" in html


def test_report_of_a_run_with_every_signal_has_every_plot_and_escapes_captions(rich_run):
    report = write_report(rich_run)
    html = report.read_text()
    assert set(pngs(report)) == ALL_PLOTS
    assert "min_score 0.15" in html  # the threshold, in the scores table (and on the plot)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script" not in html.lower() and "<b>bold" not in html
    assert {"low_clip_score", "balanced_out", "wrong_language"} <= set(stats.funnel(rich_run)["rejected"])


def test_report_omits_the_sections_of_steps_that_did_not_run(run_dir, tmp_path):
    annotated = copy_run(run_dir, tmp_path / "annotated", parts=("samples",))
    report = write_report(annotated)
    assert set(pngs(report)) == {"caption_length", "image_sides", "languages"}
    assert section_ids(report) == ["overview", "caption-length", "image-sides", "languages"]

    no_raw = copy_run(run_dir, tmp_path / "no-raw")
    (no_raw / "raw").unlink()  # deleted after emit to save space: cards say so instead of images
    html = write_report(no_raw).read_text()
    assert "kept" in section_ids(no_raw / "report" / "report.html") and "image not in raw/" in html
    assert "data:image/jpeg" not in html

    acquired = copy_run(run_dir, tmp_path / "acquired", parts=())
    report = write_report(acquired)
    assert not pngs(report) and section_ids(report) == ["overview"]


def test_a_new_report_replaces_the_old_one_whole(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    assert "funnel" in pngs(write_report(run))
    shutil.rmtree(run / "decisions")
    report = write_report(run)
    assert "funnel" not in pngs(report)  # not merged with the previous report
    assert not [p for p in (run / ".tmp").iterdir()]  # no temp folder left behind


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: found, or installed with apt-get when running as root, else the test is skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and this user cannot install it (`apt-get install chromium` as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=900, env=env)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"chromium is not installed and `{' '.join(command)}` failed: {str(err.stderr)[-500:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no `chromium` is on PATH")
    return found


def test_report_renders_in_a_headless_browser_without_errors(report, chromium):
    """Playwright drives the system chromium (its own browser download is not needed)."""
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=screenshot, full_page=True)
        browser.close()
    assert not errors
    assert images and all(images)  # every plot and thumbnail decoded
    assert all(url.startswith(("file:", "data:")) for url in requests)
    with Image.open(screenshot) as shot:
        assert shot.width >= 1280 and shot.height > 2000


# --- canned queries ---------------------------------------------------------------------------


def sql(run_dir: Path, query: str) -> list[tuple]:
    con = stats.connect(run_dir)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def test_language_counts_equal_a_group_by(rich_run):
    rows = stats.languages(rich_run).rows
    expected = sql(
        rich_run,
        """SELECT s.lang, count(*), count(*) FILTER (WHERE d.keep) FROM samples s JOIN decisions d USING (key)
           GROUP BY 1""",
    )
    assert sorted(rows) == sorted(expected) and {r[0] for r in rows} >= {"en", "de", "fr"}
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)


def test_duplicate_clusters_account_for_every_duplicate(run_dir):
    rows = stats.duplicates(run_dir).rows
    (dups,) = sql(run_dir, "SELECT count(*) FROM decisions WHERE reason = 'dup_exact'")[0]
    assert dups > 0 and sum((size - 1) * clusters for _, size, clusters in rows) == dups
    assert {reason for reason, _, _ in rows} == {"dup_exact"}


def test_funnel_rows_match_the_manifest(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())["funnel"]
    rows = dict(stats.funnel_rows(run_dir).rows)
    assert {k: rows[k] for k in manifest["steps"]} == manifest["steps"]
    assert {k.removeprefix("rejected: "): v for k, v in rows.items() if k.startswith("rejected: ")} == manifest[
        "rejected"
    ]


def test_scores_summarise_the_clip_column(rich_run):
    got = {r[0]: r[1:] for r in stats.scores(rich_run).rows}
    (n, median, kept_mean, kept_min) = sql(
        rich_run,
        """SELECT count(s.clip_score), median(s.clip_score), avg(s.clip_score) FILTER (WHERE d.keep),
                  min(s.clip_score) FILTER (WHERE d.keep) FROM samples s JOIN decisions d USING (key)""",
    )[0]
    assert got["rows scored"][0] == n
    assert got["median"][0] == pytest.approx(median, abs=1e-4)
    assert got["mean"][1] == pytest.approx(kept_mean, abs=1e-4)
    assert got["min"][1] >= 0.15 - 1e-6 and got["min"][1] == pytest.approx(kept_min, abs=1e-4)
    assert got["min_score 0.15"] == (0.15, None)


def test_concept_head_counts_match_a_direct_query(rich_run):
    # rich_run's recipe has no concepts stage, so no vocabulary names its ids: they show as #id
    head = {int(r[0][1:]): r[1:] for r in stats.concepts(rich_run).rows if r[0].startswith("#")}
    expected = sql(
        rich_run,
        """SELECT c, count(*), count(*) FILTER (WHERE keep) FROM (
               SELECT unnest(s.concept_ids) AS c, d.keep FROM samples s JOIN decisions d USING (key)
               WHERE d.keep OR d.reason IN ('balanced_out', 'no_concept')) GROUP BY c""",
    )
    assert head and all(head[c] == (before, after) for c, before, after in expected if c in head)


def test_compare_puts_runs_side_by_side_and_notes_what_a_run_lacks(run_dir, rich_run):
    joined, notes = stats.compare([run_dir, rich_run], stats.languages)
    labels = stats.run_labels([run_dir, rich_run])
    assert joined.columns == ["lang", *(f"{label}: {c}" for label in labels for c in ("samples", "kept"))]
    by_lang = {r[0]: r[1:] for r in joined.rows}
    assert by_lang["de"][:2] == (None, None)  # the demo run has no German captions
    for lang, samples, kept in stats.languages(rich_run).rows:
        assert by_lang[lang][2:] == (samples, kept)
    scores, notes = stats.compare([run_dir, rich_run], stats.scores)
    assert len(notes) == 1 and "clip_score" in notes[0] and str(run_dir) in notes[0]
    assert all(row[1] is None for row in scores.rows)


# --- the command line -------------------------------------------------------------------------


def cli(*args: str):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args])
    return result


def test_stats_canned_queries_print_one_column_per_run(run_dir, rich_run):
    result = cli("stats", run_dir, "--languages", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {  # one document
        "languages": [dict(zip(["lang", "samples", "kept"], row, strict=True)) for row in stats.languages(run_dir).rows]
    }
    result = cli("stats", run_dir, rich_run, "--funnel", "--duplicates", "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    labels = stats.run_labels([run_dir, rich_run])
    assert lines[0] == f"funnel,{labels[0]},{labels[1]}"
    assert lines.count(f"reason,cluster size,{labels[0]},{labels[1]}") == 1


def test_stats_free_sql_still_runs_on_one_run_and_stacks_several(run_dir, rich_run):
    query = "SELECT count(*) AS n FROM kept"
    result = cli("stats", run_dir, query, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"sql": [{"n": sql(run_dir, query)[0][0]}]}
    result = cli("stats", run_dir, rich_run, "SELECT count(*) AS n FROM decisions WHERE keep", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "run,n" and len(result.stdout.splitlines()) == 3


def test_stats_says_which_stage_a_canned_query_needs(run_dir):
    result = cli("stats", run_dir, "--scores")
    assert result.exit_code == 1
    # the message wraps where the run path (longer under pytest-xdist) pushes it: compare it unwrapped
    assert "no clip_score column (the clip stage did not run)" in result.output.replace("\n", "")
    assert cli("stats", run_dir, "no-such-run").exit_code == 2


def test_status_of_a_finished_run(run_dir):
    result = cli("status", run_dir)
    assert result.exit_code == 0, result.output
    for step in ("acquire", "annotate", "decide", "emit", "report"):
        assert re.search(rf"│ {step} +│ done ", result.stdout)
    for step in set(step_order()) - {"acquire", "annotate", "decide", "emit", "report"}:
        assert re.search(rf"│ {step} +│ skipped ", result.stdout)  # e.g. enrich: the demo recipe has none
    assert "rows=" in result.stdout and "rejected: dup_exact" in result.stdout
    assert "complete: every step finished." in result.stdout


def test_status_of_a_failed_and_of_an_interrupted_run(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run", parts=())
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["steps"]["emit"].update(status="failed", error="OSError: [Errno 28] No space left on device")
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = cli("status", run)
    assert result.exit_code == 0, result.output
    assert "step emit FAILED: OSError: [Errno 28] No space left on device" in result.stdout
    assert f"resume with: curate decide {run}" in result.stdout

    manifest["steps"] = {"acquire": {**manifest["steps"]["acquire"], "status": "running"}}
    del manifest["steps"]["acquire"]["seconds"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = cli("status", run)
    assert result.exit_code == 0, result.output
    assert "step acquire was INTERRUPTED: running since" in result.stdout  # no process holds the lock
    assert re.search(r"│ annotate +│ not started", result.stdout)
    assert (
        f"resume with: curate run {manifest['recipe_source']} --input {manifest['input']} --output {run}"
        in result.stdout
    )


def test_report_command_writes_the_report(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    assert (run / "report" / "report.html").is_file()
    assert cli("report", tmp_path).exit_code == 2  # not a run directory
