"""clip_score relative: true (CSLS at decide time): hub captions that sit close to every image lose their edge."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.decide import decide
from curate.decide.relative import csls_scores
from curate.recipe import build_recipe

D, N, HUBS, WRONG = 64, 300, 30, 30


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pool(tmp_path):
    """N pairs: true captions near their image; HUBS generic captions near every image; WRONG unrelated."""
    rng = np.random.default_rng(0)
    common = unit(rng.normal(size=(1, D)))  # what every picture of this pool shares (cos ~0.7 with each)
    images = unit(rng.normal(size=(N, D)) + np.sqrt(D) * common)
    texts = unit(images + 1.2 * unit(rng.normal(size=(N, D))))  # true captions: cos ~0.64 with their image
    hub = common
    texts[:HUBS] = unit(hub + 0.05 * rng.normal(size=(HUBS, D)))  # "image", "photo": close to everything
    texts[HUBS : HUBS + WRONG] = unit(rng.normal(size=(WRONG, D)))  # a caption of another picture
    keys = [f"{i:04d}" for i in range(N)]
    cos = np.einsum("ij,ij->i", images, texts)
    samples = pa.table(
        {
            "key": keys,
            "url": keys,
            "caption": keys,
            "status": ["success"] * N,
            "decode_error": pa.nulls(N, pa.string()),
            "width": [64] * N,
            "clip_score": cos.astype(np.float32),
        }
    )
    pq.write_table(samples, tmp_path / "samples.parquet")
    (tmp_path / "embeddings").mkdir()
    half = N // 2
    emb = {
        c: pa.array(list(m.astype(np.float16)), pa.list_(pa.float16()))
        for c, m in (("clip_image_emb", images), ("clip_text_emb", texts))
    }
    for name, part in (("a", slice(0, half)), ("b", slice(half, None))):
        table = pa.table({"key": keys[part], **{c: v[part] for c, v in emb.items()}})
        pq.write_table(table, tmp_path / "embeddings" / f"{name}.parquet")
    return keys, cos


def rejected(tmp_path, **params) -> set[int]:
    annotate = ["image", {"stage": "clip", "model": "clip-tiny"}]
    recipe = build_recipe({"annotate": annotate, "decide": [{"policy": "clip_score", **params}]})
    decide(str(tmp_path / "samples.parquet"), recipe.decide, tmp_path / "d", embeddings_dir=tmp_path / "embeddings")
    rows = pq.read_table(tmp_path / "d").to_pylist()
    return {int(r["key"]) for r in rows if not r["keep"]}


def test_relative_score_rejects_hub_captions_a_plain_cosine_keeps(tmp_path):
    pool(tmp_path)
    plain = rejected(tmp_path, keep_top=0.8)
    relative = rejected(tmp_path, keep_top=0.8, relative=True, reference=200)
    assert len(plain) == len(relative) == round(0.2 * N)
    assert set(range(HUBS, HUBS + WRONG)) <= plain  # both catch captions of another picture
    hubs = set(range(HUBS))
    assert len(relative & hubs) >= 2 * len(plain & hubs) + 5  # measured: plain 6 of 30 hubs, relative 22


def test_csls_streams_every_row_once_and_is_seeded(tmp_path):
    keys, cos = pool(tmp_path)
    parts = list(csls_scores(str(tmp_path / "embeddings"), k=5, reference=100, seed=1))
    table = pa.concat_tables(parts)
    assert sorted(table.column("key").to_pylist()) == keys
    again = pa.concat_tables(list(csls_scores(str(tmp_path / "embeddings"), k=5, reference=100, seed=1)))
    assert table.column("csls").to_pylist() == again.column("csls").to_pylist()
    np.testing.assert_allclose(table.column("clip_score").to_numpy(), cos, atol=2e-3)  # float16 storage


def test_stats_show_the_cut_on_the_relative_score_not_the_plain_one(tmp_path):
    """stats --scores draws no plain-cosine cut for a relative run; --heads and the report show the relative one."""
    import duckdb

    from curate.report.stats import clip_thresholds, score_cuts

    pool(tmp_path)
    lost = rejected(tmp_path, keep_top=0.8, relative=True, reference=200)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW samples AS SELECT * FROM read_parquet('{tmp_path / 'samples.parquet'}')")
    con.execute(f"CREATE VIEW decisions AS SELECT * FROM read_parquet('{tmp_path / 'd'}/*.parquet')")
    manifest = {"recipe": {"decide": [{"policy": "clip_score", "keep_top": 0.8, "relative": True}]}}
    assert clip_thresholds(con, manifest) == []
    (cut,) = score_cuts(manifest, con)
    assert cut["reason"] == "low_clip_score" and cut["expr"] == 'd."score_clip_relative"'
    ((value, label),) = cut["lines"]
    kept_min = con.execute("SELECT min(score_clip_relative) FROM decisions WHERE keep").fetchone()[0]
    assert label.startswith("keep_top 0.8") and value <= kept_min  # the highest rejected relative score
    assert con.execute(f"SELECT count(*) FROM decisions WHERE score_clip_relative > {value}").fetchone()[0] == N - len(
        lost
    )
    plain = {"recipe": {"decide": [{"policy": "clip_score", "keep_top": 0.8}]}}
    assert score_cuts(plain, con) == [] and len(clip_thresholds(con, plain)) == 1
