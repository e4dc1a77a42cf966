"""End to end: `curate run` on a real loopback server with planted defects, under embedded Ray."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import shutil
import tarfile
from collections import Counter

import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
from PIL import Image

from curate import reasons
from curate.cli import stats
from curate.manifest import Manifest
from curate.recipe import load_recipe
from curate.run import redecide, run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(served_corpus, ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo-run")
    recipe = load_recipe("demo", ["acquire.samples_per_shard=40", "emit.samples_per_shard=50"])
    result = run_pipeline(recipe, served_corpus.urls, run_dir)
    return run_dir, result


def decisions(run_dir):
    return pq.read_table(f"{run_dir}/decisions").to_pylist()


def test_every_input_row_is_decided_exactly_once(demo_run, served_corpus):
    run_dir, result = demo_run
    rows = decisions(run_dir)
    keys = [r["key"] for r in rows]
    inputs = pq.read_table(f"{run_dir}/input").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == len(served_corpus.rows)
    assert sorted(keys) == sorted(inputs)
    kept = sum(r["keep"] for r in rows)
    assert kept + sum(result.funnel["rejected"].values()) == len(rows) == result.funnel["steps"]["input"]
    assert all(r["reason"] in reasons.REASONS for r in rows if not r["keep"])


def test_each_planted_defect_ends_with_its_reason(demo_run, served_corpus):
    run_dir, _ = demo_run
    inputs = pq.read_table(f"{run_dir}/input").column("key").to_pylist()
    expected = dict(zip(inputs, served_corpus.expected_reasons(), strict=True))
    got = {r["key"]: r["reason"] for r in decisions(run_dir)}
    wrong = {k: (expected[k], got[k]) for k in got if expected[k] != got[k]}
    assert not wrong
    assert {"download_error", "decode_error", "too_small", "dup_exact"} <= set(got.values())


def test_duplicates_point_at_the_kept_copy(demo_run):
    run_dir, _ = demo_run
    rows = {r["key"]: r for r in decisions(run_dir)}
    dups = [r for r in rows.values() if r["reason"] == "dup_exact"]
    assert dups and all(rows[r["dup_of"]]["keep"] for r in dups)


def test_shards_read_back_with_webdataset_and_match_metadata(demo_run):
    run_dir, _ = demo_run
    sizes = json.loads((run_dir / "shards" / "sizes.json").read_text())
    tars = sorted(glob.glob(f"{run_dir}/shards/*.tar"))
    assert [t.rsplit("/", 1)[1] for t in tars] == sorted(sizes)
    for tar in tars:  # sizes.json counts samples, three members each
        with tarfile.open(tar) as f:
            assert len(f.getnames()) == 3 * sizes[tar.rsplit("/", 1)[1]]
    meta = {r["key"]: r for r in pq.read_table(f"{run_dir}/metadata").to_pylist()}
    assert "phash" in next(iter(meta.values()))
    assert not {"colour_sig", "raw_shard", "image_offset"} & set(next(iter(meta.values())))  # run-internal columns
    kept = {r["key"] for r in decisions(run_dir) if r["keep"]}
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert {s["__key__"] for s in samples} == kept == set(meta)
    assert len(samples) == sum(sizes.values())
    for s in samples:
        record = meta[s["__key__"]]
        assert s["txt"].decode() == record["caption"]
        assert json.loads(s["json"])["url"] == record["url"] and "colour_sig" not in json.loads(s["json"])
        assert Image.open(io.BytesIO(s["jpg"])).format == "JPEG"
        if record["format"] == "jpeg":  # JPEG bytes are copied untouched from raw/
            assert hashlib.sha256(s["jpg"]).hexdigest() == record["sha256"]


def test_shards_read_back_with_ray_data(demo_run):
    run_dir, result = demo_run
    ds = ray.data.read_webdataset(f"{run_dir}/shards", file_extensions=["tar"])
    assert ds.count() == result.funnel["steps"]["kept"]


def test_emitted_shards_are_shuffled_not_in_key_order(demo_run):
    run_dir, _ = demo_run
    order = pq.read_table(f"{run_dir}/metadata").column("key").to_pylist()
    assert order != sorted(order)


def test_stats_prints_the_funnel_and_runs_sql(demo_run, capsys):
    run_dir, result = demo_run
    stats(run_dir, None, "table")
    assert "dup_exact" in capsys.readouterr().out
    stats(run_dir, "SELECT reason, count(*) AS n FROM decisions WHERE NOT keep GROUP BY 1", "json")
    got = {row["reason"]: row["n"] for row in json.loads(capsys.readouterr().out)["sql"]}
    assert got == result.funnel["rejected"]


def test_rerun_reuses_every_finished_step(demo_run, served_corpus, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(demo_run[0], run_dir)
    run_pipeline(
        load_recipe("demo", ["acquire.samples_per_shard=40", "emit.samples_per_shard=50"]),
        served_corpus.urls,
        run_dir,
    )
    steps = Manifest(run_dir).steps
    assert steps["acquire"]["shards_downloaded"] == 0
    assert steps["annotate"]["executions"] == 1
    assert steps["emit"]["executions"] == 2


def test_redecide_changes_thresholds_without_reannotating(demo_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(demo_run[0], run_dir)
    before = Counter(r["reason"] for r in decisions(run_dir))
    result = redecide(run_dir, ["decide.image_size.min_side=300"])
    after = Counter(r["reason"] for r in decisions(run_dir))
    samples = pq.read_table(f"{run_dir}/samples").to_pylist()
    usable = [s for s in samples if s["status"] == "success" and s["decode_error"] is None]
    # image_size is the first policy after availability, so it claims every usable small image
    assert after["too_small"] == sum(min(s["width"], s["height"]) < 300 for s in usable)
    assert after["too_small"] > before["too_small"]
    steps = Manifest(run_dir).steps
    assert steps["annotate"]["executions"] == 1 and steps["decide"]["executions"] == 2
    assert result.funnel["steps"]["kept"] == sum(json.loads((run_dir / "shards/sizes.json").read_text()).values())
