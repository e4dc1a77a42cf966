"""The CLIP stage: same scores under a Ray actor pool as in process; CLIPScore filtering finds
planted mismatched captions; thresholds change without recomputing embeddings."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.demo.corpus import build_corpus
from curate.demo.server import LoopbackServer, write_url_list
from curate.manifest import Manifest
from curate.recipe import build_recipe
from curate.run import redecide, run_pipeline
from curate.signals.clip import ClipScorer

pytestmark = pytest.mark.slow


def recipe(model: str, keep_top: float) -> dict:
    return {
        "acquire": {"samples_per_shard": 50, "timeout": 2, "allow_private_addresses": True},
        "annotate": ["image", "hashes", "caption", {"stage": "clip", "model": model, "batch_size": 32}],
        "decide": [
            {"policy": "image_size", "min_side": 64},
            "exact_dedup",
            {"policy": "clip_score", "keep_top": keep_top},
        ],
        "emit": {"samples_per_shard": 64},
    }


def mismatched_pool(seed: int = 5, n_clean: int = 100, fraction: float = 0.4):
    """A corpus whose captions are shuffled among a random 40 % of the clean rows (a derangement)."""
    objects, rows = build_corpus(n_clean=n_clean, seed=seed, slow_delay_s=3.0)
    clean = [i for i, r in enumerate(rows) if r.defect is None]
    chosen = random.Random(seed).sample(clean, int(fraction * len(clean)))
    captions = [rows[i].caption for i in chosen]
    rotated = captions[1:] + captions[:1]  # every chosen row gets another row's caption
    for i, caption in zip(chosen, rotated, strict=True):
        rows[i] = type(rows[i])(rows[i].path, caption, "mismatched", None)
    return objects, rows


@pytest.fixture(scope="module")
def scored_run(lit_model, ray_session, tmp_path_factory):
    objects, rows = mismatched_pool()
    tmp = tmp_path_factory.mktemp("clip-run")
    with LoopbackServer(objects) as server:
        urls = write_url_list(rows, server.base_url, tmp / "urls.parquet")
        result = run_pipeline(build_recipe(recipe(str(lit_model), 0.5), "clip-test"), urls, tmp / "run")
    defects = pq.read_table(urls).column("defect").to_pylist()
    return tmp / "run", defects, result


def samples_in_key_order(run_dir) -> list[dict]:
    return sorted(pq.read_table(f"{run_dir}/samples").to_pylist(), key=lambda r: r["key"])


def test_clip_score_ranks_planted_mismatches_below_true_pairs(scored_run):
    run_dir, defects, _ = scored_run
    samples = samples_in_key_order(run_dir)
    matched = [
        s["clip_score"] for s, d in zip(samples, defects, strict=True) if d is None and s["clip_score"] is not None
    ]
    mismatched = [s["clip_score"] for s, d in zip(samples, defects, strict=True) if d == "mismatched"]
    assert len(mismatched) >= 30 and len(matched) >= 50
    wins = np.mean([[m > x for x in mismatched] for m in matched])
    assert wins > 0.8, wins  # AUC; a random model gives 0.5


def test_keep_top_keeps_the_requested_fraction_of_the_whole_pool(scored_run):
    run_dir, _, _ = scored_run
    decisions = pq.read_table(f"{run_dir}/decisions").to_pylist()
    reached = [d for d in decisions if d["keep"] or d["reason"] == "low_clip_score"]
    kept = sum(d["keep"] for d in decisions)
    assert abs(kept - 0.5 * len(reached)) <= 1
    scores = {s["key"]: s["clip_score"] for s in samples_in_key_order(run_dir)}
    lowest_kept = min(scores[d["key"]] for d in decisions if d["keep"])
    assert all(scores[d["key"]] <= lowest_kept for d in decisions if d["reason"] == "low_clip_score")


def test_embeddings_are_stored_float16_keyed_and_the_model_recorded(scored_run, lit_model):
    run_dir, _, _ = scored_run
    table = pq.read_table(f"{run_dir}/embeddings")
    assert table.schema.field("clip_image_emb").type == pa.list_(pa.float16())
    with_image = [r for r in table.to_pylist() if r["clip_image_emb"] is not None]
    assert len({len(r["clip_image_emb"]) for r in with_image}) == 1 and len(with_image[0]["clip_image_emb"]) == 384
    assert "clip_image_emb" not in pq.read_schema(next((run_dir / "samples").glob("*.parquet"))).names
    assert Manifest(run_dir).steps["annotate"]["models"] == {"clip": str(lit_model)}


def test_changing_keep_top_redecides_without_recomputing_embeddings(scored_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(scored_run[0], run_dir)
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "embeddings").glob("*.parquet")}
    result = redecide(run_dir, ["decide.clip_score.keep_top=0.3"])
    decisions = pq.read_table(f"{run_dir}/decisions").to_pylist()
    reached = sum(1 for d in decisions if d["keep"] or d["reason"] == "low_clip_score")
    assert abs(result.funnel["steps"]["kept"] - 0.3 * reached) <= 1
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "embeddings").glob("*.parquet")} == before
    assert Manifest(run_dir).steps["annotate"]["executions"] == 1


def test_actor_pool_scores_equal_in_process_scores(lit_model, curated_shards, ray_session):
    """The stage under Ray (CPU prepare tasks + an actor pool) gives the in-process scores (1e-5)."""
    import webdataset as wds

    from curate import runtime

    rows = list(wds.WebDataset(str(curated_shards / "00000.tar"), shardshuffle=False))[:48]
    batch = pa.table(
        {
            "key": [r["__key__"] for r in rows],
            "image": pa.array([r["jpg"] for r in rows], pa.binary()),
            "caption": [r["txt"].decode() for r in rows],
        }
    )
    config = ClipScorer.Config(model=str(lit_model), batch_size=16)
    local = dict(
        zip(batch.column("key").to_pylist(), ClipScorer(config)(batch).column("clip_score").to_pylist(), strict=True)
    )
    with runtime.session(num_cpus=2):
        remote_table = runtime.run_stage(batch, ClipScorer(config))
    remote = dict(
        zip(remote_table.column("key").to_pylist(), remote_table.column("clip_score").to_pylist(), strict=True)
    )
    assert remote.keys() == local.keys()
    np.testing.assert_allclose([remote[k] for k in local], list(local.values()), atol=1e-5)
    assert np.std(list(local.values())) > 0.01  # real, varied scores, not a constant
