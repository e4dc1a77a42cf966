"""Deduplication policies: semantic dedup and keep preference on constructed tables (no Ray), and
planted duplicates spread over shards through a real run (pHash near-dups, exact, decontamination)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.decide import decide
from curate.recipe import build_recipe


def write_run(tmp_path, samples: dict, embeddings: np.ndarray | None = None):
    (tmp_path / "samples").mkdir()
    pq.write_table(pa.table(samples), tmp_path / "samples" / "part.parquet")
    if embeddings is not None:
        (tmp_path / "embeddings").mkdir()
        emb = pa.array(list(embeddings.astype(np.float16)), pa.list_(pa.float16()))
        pq.write_table(
            pa.table({"key": samples["key"], "clip_image_emb": emb}), tmp_path / "embeddings" / "part.parquet"
        )


def base_columns(n: int) -> dict:
    return {
        "key": [f"{i:04d}" for i in range(n)],
        "url": [f"http://h/{i}" for i in range(n)],
        "caption": ["c"] * n,
        "status": ["success"] * n,
        "width": [100] * n,
        "height": [100] * n,
        "decode_error": pa.nulls(n, pa.string()),
    }


def run_decide(tmp_path, policies: list) -> dict:
    recipe = build_recipe(
        {"annotate": ["image", "hashes", {"stage": "clip", "model": "clip-tiny"}], "decide": policies}
    )
    out = tmp_path / "decisions.parquet"
    decide(f"{tmp_path}/samples/*.parquet", recipe.decide, out, tmp_path / "embeddings")
    return {r["key"]: (r["reason"], r["dup_of"]) for r in pq.read_table(out).to_pylist()}


def test_semantic_dedup_keeps_the_best_scored_member_of_each_group(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 64))
    emb[10] = emb[3] + rng.normal(scale=1e-3, size=64)  # group {3, 10, 41}
    emb[41] = emb[3] + rng.normal(scale=1e-3, size=64)
    emb[50] = emb[7] + rng.normal(scale=1e-3, size=64)  # group {7, 50}
    cols = base_columns(60) | {"clip_score": [0.1] * 60}
    cols["clip_score"][41] = 0.9  # the best of its group: kept although its key is larger
    write_run(tmp_path, cols, emb)
    got = run_decide(tmp_path, [{"policy": "semantic_dedup", "eps": 0.01, "n_clusters": 1}])
    dups = {k: v for k, v in got.items() if v[0]}
    assert dups == {
        "0003": ("dup_semantic", "0041"),
        "0010": ("dup_semantic", "0041"),
        "0050": ("dup_semantic", "0007"),
    }


def test_semantic_dedup_without_embeddings_says_what_to_add(tmp_path):
    write_run(tmp_path, base_columns(3) | {"clip_score": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="add the clip stage"):
        run_decide(tmp_path, ["semantic_dedup"])


def test_exact_dedup_prefers_larger_images_then_smaller_keys(tmp_path):
    cols = base_columns(4) | {"sha256": ["a", "a", "a", "b"]}
    cols["pixels"] = [10_000, 10_000, 30_000, 10_000]
    write_run(tmp_path, cols)
    got = run_decide(tmp_path, [{"policy": "exact_dedup", "prefer": ["pixels desc", "key asc"]}])
    assert got["0002"] == (None, None)
    assert got["0000"] == ("dup_exact", "0002") and got["0001"] == ("dup_exact", "0002")
