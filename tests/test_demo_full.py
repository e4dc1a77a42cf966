"""`curate demo`'s whole mission at a tiny size: every step runs, every output is there, a second demo reuses the
cached models; and the real pairs' loading code (emoji sources, when installed)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from curate.demo import mission, sources

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the fixture runs the whole demo twice (minutes)

HYGIENE = {"download_error", "download_timeout", "decode_error", "too_small", "dup_exact", "caption_boilerplate"}
"""Planted defects whose reason does not depend on a trained model: each such row must get exactly its reason."""


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_session):
    cache, output = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("demo") / "demo-run"
    first = mission.run_mission(output, mission.TINY, corpus="shapes", cache=cache)
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    second = mission.run_mission(output, mission.TINY, corpus="shapes", cache=cache)
    return first, second, output, cache, stamps


def test_every_step_writes_its_output(demo):
    result, _, output, _, _ = demo
    run = output
    assert result.corpus == "shapes" and set(result.seconds) == {
        "corpus", "filter", "calibrate", "captioner", "curate", "train", "eval"
    }  # fmt: skip
    tars = sorted((run / "shards").glob("*.tar"))
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
    assert {n.rsplit(".", 1)[1] for n in names} >= {"jpg", "txt", "json"}
    kept = pq.ParquetDataset(run / "metadata").read()
    assert kept.num_rows == result.funnel["steps"]["kept"] > 0
    assert {"caption_synthetic", "caption_alt", "clip_score", "concept_ids"} <= set(kept.column_names)
    for name in ("pretrain.json", "instruct.json"):
        assert len(json.loads((run / "llava" / name).read_text())) == kept.num_rows
    assert (output / "clip" / "open_clip_model.safetensors").is_file()
    metrics = json.loads((output / "clip" / "eval.json").read_text())
    assert metrics["retrieval"]["n"] > 0 and metrics["zero_shot"]["classes"] == 8
    report = (run / "report" / "report.html").read_text()
    sections = ("overview", "funnel", "clip-score", "caption-length", "image-sides", "languages", "concepts",
                "duplicates", "captions", "kept", "rejected")  # fmt: skip
    assert all(f'id="{s}"' in report for s in sections)
    assert json.loads((output / "demo.json").read_text())["paths"] == result.paths


def test_every_sample_ends_kept_or_with_a_reason_and_planted_defects_get_theirs(demo):
    result, _, output, _, _ = demo
    run = output
    listed = pq.read_table(run / "demo_urls.parquet", columns=["url", "expected_reason"]).to_pylist()
    truth = {r["url"]: r["expected_reason"] for r in listed}
    urls = {r["key"]: r["url"] for r in pq.read_table(run / "samples", columns=["key", "url"]).to_pylist()}
    decisions = pq.read_table(run / "decisions").to_pylist()
    assert len(decisions) == len(truth) == result.funnel["steps"]["input"]
    assert all(d["keep"] or d["reason"] for d in decisions)
    planted = {urls[d["key"]]: d["reason"] for d in decisions if truth[urls[d["key"]]] in HYGIENE}
    assert planted == {u: r for u, r in truth.items() if r in HYGIENE}
    assert set(result.funnel["rejected"]) >= HYGIENE


def test_a_second_demo_reuses_the_cached_models_and_the_run(demo):
    first, second, _, cache, stamps = demo
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    assert {p.name.split("-")[0] for p in cache.iterdir()} == {"filter", "captioner"}
    assert second.filter == first.filter and second.funnel == first.funnel and second.eval == first.eval


def test_the_summary_names_every_reject_reason_and_output(demo, capsys):
    result = demo[0]
    mission.print_summary(result)
    out = capsys.readouterr().err.replace("\n", "")
    assert all(reason in out for reason in result.funnel["rejected"])
    assert "curate eval clip" in out and "next:" in out and "zero-shot top1" in out


def test_generated_fallback_plants_caption_noise_slow_url_and_redrawn_copies(tmp_path):
    data = sources.shapes_corpus(tmp_path, pool=40, semantic=2)
    kinds = [r.defect for r in data.rows]
    assert {"boilerplate", "non_english", "mismatched", "slow", "dup_semantic", "duplicate"} <= set(kinds)
    assert all(r.path in data.objects or r.defect == "missing" for r in data.rows)
    assert sum(1 for o in data.objects.values() if o.delay_s >= sources.SLOW_DELAY_S) == 1


def test_real_pairs_load_from_the_emoji_sources(tmp_path, monkeypatch):
    pytest.importorskip("emoji", reason="pip install emoji cairosvg (the bench extra)")
    pytest.importorskip("cairosvg", reason="pip install emoji cairosvg (the bench extra)")
    from curate.demo.emoji_sources import SourceUnavailable, ensure_sources

    try:
        ensure_sources(install=False)
    except SourceUnavailable as err:
        pytest.skip(f"emoji sources not installed: {err}")
    data = sources.emoji_corpus(tmp_path / "demo", pool=60, semantic=2, built=tmp_path / "built")
    reasons = {r.expected_reason for r in data.rows}
    assert {"low_clip_score", "wrong_language", "dup_near", "dup_semantic", "download_timeout"} <= reasons
    assert pq.read_metadata(data.seed_val).num_rows > 0 and (data.eval_data / "00000.tar").is_file()
    classes = yaml.safe_load(Path(data.zero_shot).read_text())["classes"]
    assert len(classes) > 10 and all(isinstance(c, str) for c in classes)
