"""Benchmark: `curate calibrate`'s estimates against ground truth on the emoji quality corpus.

Claim checked: without trusted sets (near copies of the run's own images; the run's images as
negatives, its own duplicates taken out), the estimated recall and false-merge share per k follow the
truth of a pool with planted near copies, and the recommended k keeps the true false-merge share
under ``--max-false-merge``.

What runs: the quality corpus (``curate.demo.emoji_corpus``, ``--n`` rows, 8 % near copies) through
``benchmarks/quality_recipe.yaml`` without its CLIP stage, up to decide (loopback server, the real
pipeline); then ``calibrate_run`` twice: with no trusted set, and with the planted pairs as
``--duplicates``. Truth per k: the planted copies within k of their original (recall), and the pairs
of distinct images within k over the pool's decoded images (false-merge share).

    .venv/bin/python benchmarks/calibrate.py --n 1500 --seed 0     # needs the bench extra (cairosvg)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from curate.calibrate import calibrate_run
from curate.calibrate.measure import K_CANDIDATES, hamming, hamming_histogram

RECIPE = Path(__file__).resolve().parent / "quality_recipe.yaml"


def build_run(out: Path, n: int, seed: int) -> Path:
    """The quality corpus curated up to decide into ``out/run`` (reused when present)."""
    from curate.demo.emoji_corpus import build_quality_corpus, write_truth
    from curate.demo.emoji_sources import default_cache
    from curate.demo.server import LoopbackServer
    from curate.recipe import build_recipe
    from curate.run import run_pipeline

    run = out / "run"
    if (run / "decisions").exists():
        return run
    objects, rows = build_quality_corpus(out / "pool", n=n, seed=seed, cache=default_cache())
    data = yaml.safe_load(RECIPE.read_text())
    data["annotate"] = [s for s in data["annotate"] if not (isinstance(s, dict) and s.get("stage") == "clip")]
    data["decide"] = [p for p in data["decide"] if p.get("policy") != "clip_score"]
    with LoopbackServer(objects) as server:
        urls = write_truth(rows, server.base_url, out / "urls.parquet")
        run_pipeline(build_recipe(data, "quality-no-clip"), urls, run, until="decide")
    return run


def truth(out: Path) -> tuple[dict, list[tuple[str, str]], int]:
    """Per k: true recall of the planted near copies and true false-merge share; the planted key pairs; the pool."""
    kinds = {r["url"]: r for r in pq.read_table(out / "urls.parquet").to_pylist()}
    samples = pq.read_table(out / "run" / "samples", columns=["key", "url", "phash"]).to_pylist()
    by_url = {s["url"]: s for s in samples}
    hashed = [s for s in samples if s["phash"] is not None]
    near = [(s, by_url[kinds[s["url"]]["dup_of"]]) for s in hashed if kinds[s["url"]]["defect"] == "dup_near"]
    near = [(a, b) for a, b in near if b["phash"] is not None]
    bits = hamming(
        np.array([a["phash"] for a, _ in near], np.uint64), np.array([b["phash"] for _, b in near], np.uint64)
    )
    distinct = [s["phash"] for s in hashed if kinds[s["url"]]["defect"] not in ("dup_near", "dup_exact")]
    pairs = np.cumsum(hamming_histogram(np.array(distinct, np.uint64)))
    table = {k: {"recall": float((bits <= k).mean()), "false_merge_share": min(1.0, pairs[k] / len(hashed))}
             for k in K_CANDIDATES}  # fmt: skip
    return table, [(a["key"], b["key"]) for a, b in near], len(hashed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/calibrate-bench"))
    parser.add_argument("--out", default="benchmarks/results/calibrate.json")
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    out = args.work / f"n{args.n}-seed{args.seed}"
    run = build_run(out, args.n, args.seed)
    true, planted, pool = truth(out)
    (out / "pairs.csv").write_text("key_a,key_b\n" + "".join(f"{a},{b}\n" for a, b in planted))
    result = {"n": args.n, "seed": args.seed, "pool": pool, "planted_pairs": len(planted), "truth": true}
    for label, trusted in (("self", {}), ("duplicates", {"duplicates": str(out / "pairs.csv")})):
        found = calibrate_run(str(run), seed=args.seed, **trusted)
        result[label] = {
            "near_dedup": found["near_dedup"],
            "overrides": found["overrides"],
            "seconds": found["seconds"],
        }
    print(f"pool {pool}, planted near copies {len(planted)}")
    print("k | true recall, false-merge share | self: recall, share | planted pairs: recall, share")
    for k in K_CANDIDATES:
        s, d = (next(r for r in result[x]["near_dedup"]["table"] if r["value"] == k) for x in ("self", "duplicates"))
        print(f"{k:2d} | {true[k]['recall']:.3f} {true[k]['false_merge_share']:.4f} | {s['recall']:.3f} "
              f"{s['false_merge_share']:.4f} | {d['recall']:.3f} {d['false_merge_share']:.4f}")  # fmt: skip
    print("recommended:", {x: result[x]["overrides"] for x in ("self", "duplicates")})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
