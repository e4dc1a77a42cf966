"""Benchmark: what each recipe's output is worth to a CLIP trained on it (DataComp's test, on the quality corpus).

Claim checked: at equal samples seen, a CLIP trained on the full curated recipe's output beats one
trained on the unfiltered pool by >= 5 points of zero-shot accuracy.

What runs (``curate bench quality`` in process, on the pool of ``curate/demo/emoji_corpus.py``
served on 127.0.0.1):

- recipes: no filter (only undecodable rows go), DataComp's basic filter
  (``pipelines/datacomp-basic.yaml``), DataComp's CLIP-score filter (basic, then the top 30 % by
  CLIP score: ``pipelines/datacomp-clipscore.yaml``) and the full quality recipe
  (``benchmarks/quality_recipe.yaml``: hygiene, boilerplate, English, exact and near dedup, CLIP
  score). Both CLIP-score recipes score with the seed-set filter of ``benchmarks/quality_clip.py``;
  the full recipe's ``min_score`` and ``near_dedup.k`` are calibrated on the seed set as in
  ``benchmarks/filter_quality.py``. The pool is never looked at.
- the model trained on each output: ``configs/train/lit-offline.yaml`` (frozen EfficientNet-Lite0 and
  MiniLM towers, projections trained on cached features) for ``--samples`` samples seen.
- the eval set: the seed set's validation glyphs (Twemoji/Fluent/EmojiOne glyphs and held-out
  Noto/OpenMoji glyphs, none of them in the pool), as shards. Zero-shot: every image among the
  English names of all the eval set's emoji (~1,000 classes, CLIP's prompt ensembling over
  ``TEMPLATES``); retrieval: recall@1 of each image's own caption and back.

Run from the repository root after ``benchmarks/quality_setup.sh``::

    .venv/bin/python benchmarks/closed_loop.py                    # 3,000 rows
    .venv/bin/python benchmarks/closed_loop.py --n 600 --samples 16000 --out /tmp/closed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from filter_quality import BROKEN, RECIPE, calibrate_k
from quality_clip import calibrate, train_filter_model, validation_scores

from curate.demo.emoji_corpus import SeedSet, build_quality_corpus, build_seed_set, write_truth
from curate.demo.emoji_sources import SEED_SOURCES, SOURCES, default_cache, load_catalogue

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ["{}.", "a {} emoji.", "a {} icon.", "{} clipart.", "an illustration of a {}."]
GOAL_POINTS = 5.0


def build_eval_set(seed_set: SeedSet, cache: Path, out: Path) -> Path:
    """The seed set's validation pairs as WebDataset shards, a zero-shot task over their emoji names,
    and the eval spec naming both; returns the spec's path."""
    from curate.emit.webdataset import WebDatasetWriter

    names = {p.concept: p.name for sources in (SOURCES, SEED_SOURCES) for p in load_catalogue(sources, cache)}
    rows = [r for part in seed_set.parts for r in pq.read_table(part.val, columns=["image", "caption", "concept"]).to_pylist()]  # fmt: skip
    (out / "shards").mkdir(parents=True, exist_ok=True)
    with WebDatasetWriter(str(out / "shards" / "00000.tar")) as writer:
        for i, row in enumerate(rows):
            writer.write(f"{i:09d}", row["image"], "jpg", row["caption"], {"concept": row["concept"]})
    (out / "shards" / "sizes.json").write_text(json.dumps({"00000.tar": len(rows)}))
    classes = sorted({names[r["concept"]].lower() for r in rows if r["concept"] in names})
    task = {"description": f"Which emoji? {len(classes)} English emoji names of the eval glyphs.",
            "classes": classes, "templates": TEMPLATES}  # fmt: skip
    (out / "zero_shot.yaml").write_text(yaml.safe_dump(task, allow_unicode=True))
    spec = out / "eval.yaml"
    spec.write_text(yaml.safe_dump({"data": str(out / "shards"), "zero_shot": str(out / "zero_shot.yaml")}))
    return spec


def write_recipes(model_dir: Path, min_score: float, k: int, out: Path) -> list[Path]:
    """The compared recipes, resolved (the filter model, calibrated thresholds), as YAML files."""
    from curate.recipe import load_recipe

    clip = [f"annotate.clip.model={model_dir}", "annotate.clip.pretrained=null", "annotate.clip.batch_size=64"]
    acquire = [
        "acquire.threads=16",
        "acquire.timeout=5",
        "acquire.retries=0",
        "acquire.samples_per_shard=1000",
        "acquire.allow_private_addresses=[127.0.0.0/8]",
    ]
    recipes = {
        "basic": load_recipe(ROOT / "pipelines/datacomp-basic.yaml", acquire),
        "clipscore": load_recipe(ROOT / "pipelines/datacomp-clipscore.yaml", [*acquire, *clip]),
        "full": load_recipe(RECIPE, [*clip[:1], f"decide.clip_score.min_score={min_score:.6f}", f"decide.near_dedup.k={k}"]),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, recipe in recipes.items():
        data = {**recipe.to_dict(), "name": name}
        paths.append(out / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return paths


def filter_model(args) -> tuple[SeedSet, Path, float, int, list]:
    """The seed set, the CLIP filter trained on it, its calibrated min_score and near_dedup k, the pool."""
    objects, rows = build_quality_corpus(args.cache, args.n, args.seed)
    seed_set = build_seed_set(args.cache, args.seed)
    model_dir = train_filter_model(seed_set, args.cache / f"filter-seed{args.seed}")
    matched, _ = validation_scores(model_dir, seed_set.holdout, args.seed)
    min_score = calibrate(matched, args.max_clean_loss)
    near = calibrate_k(seed_set, sum(r.defect not in BROKEN for r in rows), args.max_false_merge, args.seed)
    return seed_set, model_dir, min_score, near["k"], [objects, rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=3000, help="rows in the pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=32_000, help="samples seen by each trained CLIP")
    parser.add_argument("--train", type=Path, default=ROOT / "configs/train/lit-offline.yaml")
    parser.add_argument("--max-clean-loss", type=float, default=0.02, help="share of true pairs min_score rejects")
    parser.add_argument("--max-false-merge", type=float, default=0.02, help="near_dedup k calibration")
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--work", type=Path, help="folder for the runs and models (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/closed_loop.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from curate.bench import NO_FILTER, bench_quality, quality_table
    from curate.console import print_rows
    from curate.demo.server import LoopbackServer

    start = time.perf_counter()
    seed_set, model_dir, min_score, k, (objects, rows) = filter_model(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="closed-loop-"))
    spec = build_eval_set(seed_set, args.cache, work / "eval")
    recipes = write_recipes(model_dir, min_score, k, work / "recipes")
    with LoopbackServer(objects) as server:
        urls = write_truth(rows, server.base_url, work / "urls.parquet")
        result = bench_quality(urls, [str(p) for p in recipes], spec, work / "bench", args.train, args.samples)
    columns, table = quality_table(result)
    print_rows(columns, table, "table")
    by_name = {r.recipe if r.recipe == NO_FILTER else r.recipe.split("-", 1)[1]: r for r in result}
    gain = 100 * (by_name["full"].zero_shot_top1 - by_name["no-filter"].zero_shot_top1)
    print(f"full recipe vs no filter: {gain:+.1f} zero-shot points (goal: >= +{GOAL_POINTS:g})")
    summary = {"n": args.n, "seed": args.seed, "samples_seen": args.samples, "train_preset": str(args.train),
               "filter": {"model": str(model_dir), "min_score": min_score, "near_dedup_k": k},
               "eval": json.loads(json.dumps(yaml.safe_load(spec.read_text()))),
               "rows": [r.__dict__ for r in result], "full_minus_no_filter_points": gain,
               "wall_s": round(time.perf_counter() - start, 1), "cores": len(os.sched_getaffinity(0))}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out} (runs and models in {work})")


if __name__ == "__main__":
    main()
