"""Decide over a constructed samples table (no Ray): reasons, order, exact dedup."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import downloaded_samples

from curate.decide import DECISION_COLUMNS, decide
from curate.recipe import build_recipe

ROWS = [
    # key, status, width, height, decode_error, sha256, caption_chars, caption_words
    ("000", "success", 300, 200, None, "aa", 20, 4),
    ("001", "failed_to_download", None, None, None, None, 20, 4),
    ("002", "bad_url", None, None, None, None, 20, 4),
    ("003", "success", None, None, "cannot identify image", "bb", 20, 4),
    ("004", "success", 30, 200, None, "cc", 20, 4),
    ("005", "success", 1000, 100, None, "dd", 20, 4),
    ("006", "success", 300, 300, None, "ee", 0, 0),
    ("007", "success", 300, 200, None, "aa", 20, 4),  # same bytes as 000
    ("008", "success", 30, 30, None, "aa", 20, 4),  # same bytes, but too small first
    ("009", "missing", None, None, None, None, 20, 4),
]
COLUMNS = [
    "key",
    "status",
    "width",
    "height",
    "decode_error",
    "sha256",
    "caption_chars",
    "caption_words",
]


def samples_file(tmp_path):
    table = pa.table({c: [r[i] for r in ROWS] for i, c in enumerate(COLUMNS)})
    table = table.append_column("url", pa.array([f"http://h/{r[0]}" for r in ROWS]))
    table = table.append_column("caption", pa.array(["c"] * len(ROWS)))
    path = tmp_path / "samples.parquet"
    pq.write_table(table, path)
    return str(path)


def test_every_row_gets_exactly_its_first_reason(tmp_path):
    recipe = build_recipe(
        {
            "annotate": ["image", "hashes", "caption"],
            "decide": [
                {"policy": "image_size", "min_side": 64, "max_aspect": 4},
                {"policy": "caption_length", "min_chars": 1},
                "exact_dedup",
            ],
        }
    )
    out = tmp_path / "decisions"
    counts = decide(samples_file(tmp_path), recipe.decide, out)
    table = pq.read_table(out)
    got = {r["key"]: (r["keep"], r["reason"], r["dup_of"]) for r in table.to_pylist()}
    assert len(table) == len(ROWS) == len(got)
    assert got == {
        "000": (True, None, None),
        "001": (False, "download_error", None),
        "002": (False, "bad_url", None),
        "003": (False, "decode_error", None),
        "004": (False, "too_small", None),
        "005": (False, "bad_aspect", None),
        "006": (False, "caption_short", None),
        "007": (False, "dup_exact", "000"),
        "008": (False, "too_small", None),
        "009": (False, "download_error", None),
    }
    assert counts == {"download_error": 2, "bad_url": 1, "decode_error": 1, "too_small": 2} | {
        "bad_aspect": 1,
        "caption_short": 1,
        "dup_exact": 1,
    }
    assert set(table.column_names) >= {"key", "url", "caption", "keep", "reason", "stage", "dup_of"}


def test_thresholds_change_without_touching_signals(tmp_path):
    samples = samples_file(tmp_path)
    strict = build_recipe({"annotate": ["image"], "decide": [{"policy": "image_size", "min_side": 250}]})
    decide(samples, strict.decide, tmp_path / "d")
    kept = pq.read_table(tmp_path / "d").filter(pa.compute.field("keep")).column("key").to_pylist()
    assert kept == ["006"]  # the only decodable image whose smaller side is >= 250


def test_language_policy_scores(tmp_path):
    """min_lang_score applies to kept languages; min_other_score decides how sure an unlisted one must be."""
    langs = [("en", 0.95), ("en", 0.30), ("de", 0.92), ("de", 0.35), (None, None)]
    table = downloaded_samples(
        [f"{i:03d}" for i in range(len(langs))],
        width=[300] * len(langs),
        height=[300] * len(langs),
        lang=[lang for lang, _ in langs],
        lang_score=pa.array([score for _, score in langs], pa.float32()),
    )
    pq.write_table(table, tmp_path / "samples.parquet")

    def kept(**config) -> list[str]:
        recipe = build_recipe({"annotate": ["image", "language"], "decide": [{"policy": "language", **config}]})
        decide(str(tmp_path / "samples.parquet"), recipe.decide, tmp_path / "d")
        return pq.read_table(tmp_path / "d").filter(pa.compute.field("keep")).column("key").to_pylist()

    assert kept() == ["000", "001"]
    assert kept(min_lang_score=0.5) == ["000"]
    assert kept(min_other_score=0.5) == ["000", "001", "003"]
    assert kept(min_lang_score=0.5, min_other_score=0.5) == ["000", "003"]
    assert kept(languages=["de"], min_other_score=0.99) == ["000", "001", "002", "003"]


def test_decisions_are_one_file_per_raw_shard_covering_every_sample_once(tmp_path):
    """Samples in part files that each mix raw shards (Ray's layout) or one file per shard: decisions
    land in decisions/{raw_shard}.parquet, sorted by key, every sample exactly once, nothing else."""
    n, shards = 3000, [f"{i:05d}" for i in range(7)]
    rng = np.random.default_rng(0)
    shard_of = [shards[i] for i in rng.integers(0, len(shards), n)]
    keys = [f"{shard}{i:06d}" for i, shard in enumerate(shard_of)]
    table = downloaded_samples(
        keys,
        raw_shard=shard_of,
        width=rng.integers(10, 400, n).tolist(),
        height=[300] * n,
        sha256=[f"h{i % 2000}" for i in range(n)],  # duplicates across raw shards
    ).take(rng.permutation(n))
    (tmp_path / "samples").mkdir()
    for part in range(3):  # each part file holds rows of every raw shard
        pq.write_table(table.slice(part * 1000, 1000), tmp_path / "samples" / f"part-{part}.parquet")
    recipe = build_recipe(
        {"annotate": ["image", "hashes"], "decide": [{"policy": "image_size", "min_side": 64}, "exact_dedup"]}
    )
    out = tmp_path / "run" / "decisions"
    counts = decide(str(tmp_path / "samples" / "*.parquet"), recipe.decide, out, memory_limit="64MB")
    assert sorted(p.name for p in out.iterdir()) == [f"{s}.parquet" for s in shards]
    seen = []
    for path in sorted(out.iterdir()):
        got = pq.read_table(path)
        assert got.column_names == list(DECISION_COLUMNS)
        assert got.column("key").to_pylist() == sorted(got.column("key").to_pylist())
        assert {k[:5] for k in got.column("key").to_pylist()} == {path.stem}
        seen += got.column("key").to_pylist()
    assert sorted(seen) == sorted(keys)  # every sample exactly once
    assert counts["dup_exact"] > 0 and counts["too_small"] > 0
    assert not list((tmp_path / "run").glob("*.tmp-*"))  # the staged folder was swapped in

    decide(str(tmp_path / "samples" / "*.parquet"), [], out)  # a re-decide replaces the folder whole
    assert pq.read_table(out).column("keep").to_pylist().count(False) == 0


def test_keep_top_and_url_filter_run_inside_duckdb_batch_by_batch(tmp_path, monkeypatch):
    """keep_top keeps exactly round(f * n) rows by score, ties broken by key; url_filter streams batches."""
    import curate.decide.urls as urls

    monkeypatch.setattr(urls, "BATCH_ROWS", 7)  # several batches
    n = 50
    table = downloaded_samples(
        [f"{i:03d}" for i in range(n)],
        url=[f"http://{'bad' if i % 10 == 3 else 'ok'}.example/{i}" for i in range(n)],
        clip_score=pa.array([float(i % 5) for i in range(n)], pa.float32()),  # ties
    )
    pq.write_table(table, tmp_path / "samples.parquet")
    recipe = build_recipe(
        {
            "annotate": ["image", {"stage": "clip", "model": "clip-tiny"}],
            "decide": [{"policy": "url_filter", "domains": ["bad.example"]}, {"policy": "clip_score", "keep_top": 0.3}],
        }
    )
    counts = decide(str(tmp_path / "samples.parquet"), recipe.decide, tmp_path / "d")
    got = pq.read_table(tmp_path / "d").to_pylist()
    assert counts == {"blocked_url": 5, "low_clip_score": 45 - round(0.3 * 45)}
    survivors = [r for r in table.to_pylist() if r["key"][-1] != "3"]
    want = sorted(survivors, key=lambda r: (-r["clip_score"], r["key"]))[: round(0.3 * 45)]
    assert {r["key"] for r in got if r["keep"]} == {r["key"] for r in want}
