"""Benchmark: precision and recall of curate's rejection reasons against planted noise with ground truth.

Claim checked: on a noisy pool of real image-text pairs (``curate/demo/emoji_corpus.py``: Noto
Color Emoji and OpenMoji glyphs with their names, composed onto backgrounds), each planted noise
kind is rejected with its reason at precision and recall >= 0.9 for mismatched captions
(``low_clip_score``), non-English captions (``wrong_language``) and near-duplicates (``dup_near``).

What runs:
1. the pool (``--n`` rows of Noto and OpenMoji glyphs, every row's truth kept) and a seed set of
   trusted pairs that shares no glyph with it (other artists' glyphs, and a held-out quarter of
   the Noto and OpenMoji glyphs) are built into ``--cache`` (once; reused after);
2. the CLIP filter: ``lit-offline`` with projections trained on the seed set
   (``benchmarks/quality_clip.py``, ``--steps``), its ``min_score`` calibrated on the seed set's
   held-out Noto/OpenMoji glyphs to reject ``--max-clean-loss`` of the true pairs (the pool is
   never looked at);
3. ``benchmarks/quality_recipe.yaml`` through :func:`curate.run.run_pipeline` on the pool served
   on 127.0.0.1 (acquire, annotate, decide, emit: the real thing);
4. ``RUN/decisions`` joined with the truth by URL. For a kind K whose expected reason is R:
   recall = rows of K rejected with R / rows of K; precision = rows rejected with R whose expected
   reason is R / rows rejected with R (kinds sharing R, e.g. corrupt and html, share it). Also the
   recall among the rows of K that reached R's policy (a row keeps the first reason it gets), the
   recall of "rejected for any reason" and the clean rows' false-rejection rate;
5. before / after: the same stored signals decided again (``curate.decide.decide``) with the old
   defaults (``BEFORE``: the language policy's ``rule: top1`` at ``min_other_score`` 0.5 and
   near_dedup without the colour check; DataComp's plain top-1; and the language policy's ``rule:
   calibrated``, the recipe's ``rule: vocab`` without word frequencies), one table of precision and recall per kind and variant, and the
   language goal's numbers (English rows wrongly rejected, non-English recall) per variant.

``--corpus icons`` builds the pool from a second source of real pairs instead, with no emoji
(flags named by pycountry in 12 languages, SVG Logos, flat-color-icons; ``emoji_sources.CORPORA``),
the same noise planted. Run two ``--seed`` values per corpus (pool, seed set and filter change).

Run from the repository root (needs ``pip install emoji cairosvg pycountry``, Debian's
``fonts-noto-color-emoji`` and npm; see ``benchmarks/quality_setup.sh``)::

    .venv/bin/python benchmarks/filter_quality.py                  # 3,000 rows, seed 0
    .venv/bin/python benchmarks/filter_quality.py --corpus icons --seed 1
    .venv/bin/python benchmarks/filter_quality.py --n 600 --keep-run /tmp/quality-run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_clip import FitSettings, auc, calibrate, train_filter_model, validation_scores

from curate.demo.emoji_corpus import NOISE, build_quality_corpus, build_seed_set, noise_counts, write_truth
from curate.demo.emoji_sources import CORPORA, SEED_SOURCES, default_cache, load_catalogue

RECIPE = Path(__file__).resolve().parent / "quality_recipe.yaml"
GOAL_KINDS = ("mismatched", "non_english", "dup_near")
GOAL = 0.9
BROKEN = ("missing", "corrupt", "html")
DEFAULT_N = {"emoji": 3000, "icons": 1000}  # icons: 236 of its 2,858 pairs (flags) have translations
BEFORE: dict[str, list[str]] = {
    "before": ["decide.language.rule=top1", "decide.language.min_other_score=0.5"],  # + near_dedup unchecked
    "datacomp": ["decide.language.rule=top1", "decide.language.min_other_score=0"],
    "calibrated": ["decide.language.rule=calibrated"],
}
"""Recipe overrides of the old defaults, decided again from the run's stored signals ("after" is the recipe);
main adds near_dedup at the plain calibrated k without the colour check to "before"."""


def calibrate_k(seed_set, n_images: int, max_false_merge: float, seed: int = 0) -> dict:
    """The near_dedup radius from trusted data, not the pool: :func:`curate.calibrate.measure.calibrate_k` (what
    `curate calibrate` measures) on the seed set's held-out Noto and OpenMoji compositions (distinct images) and
    a perturbed copy of each, for a pool of ``n_images``; and under ``verified``, the k and ``verify_colour`` limit
    `curate calibrate` recommends on the same images when pHash pairs are confirmed by the colour check."""
    import webdataset as wds

    from curate.calibrate import Probe, near_dedup_section
    from curate.calibrate.measure import calibrate_k as calibrate
    from curate.calibrate.measure import near_copies
    from curate.train.data import expand_shards

    shards = expand_shards(str(seed_set.holdout.train))
    images = [sample["jpg"] for sample in wds.WebDataset(shards, shardshuffle=False)]
    plain = calibrate(images, n_images, max_false_merge, seed)
    probe = Probe(images, list(near_copies(images, seed)), images, distinct_is_left=True, negatives_from_run=False)
    verify = near_dedup_section(probe, n_images, 0.0, max_false_merge)["verify_colour"]
    verified = {"k": verify.get("k") or plain["k"], "verify_colour": verify.get("recommended")}
    return {**plain, "verified": verified}


def near_overrides(near: dict, verified: bool = True) -> list[str]:
    """near_dedup settings from :func:`calibrate_k`: the verified k and colour limit, or the plain k unchecked."""
    if not verified:
        return [f"decide.near_dedup.k={near['k']}", "decide.near_dedup.verify_colour=null"]
    limit = near["verified"]["verify_colour"]
    return [f"decide.near_dedup.k={near['verified']['k']}", f"decide.near_dedup.verify_colour={limit or 'null'}"]


def run_recipe(objects: dict, rows: list, model_dir: Path, tuned: list[str], run_dir: Path) -> Path:
    """Serve the pool on loopback and run the quality recipe with the ``tuned`` settings into ``run_dir``;
    returns the URL list."""
    from curate.demo.server import LoopbackServer
    from curate.recipe import load_recipe
    from curate.run import run_pipeline

    recipe = load_recipe(RECIPE, [f"annotate.clip.model={model_dir}", *tuned])
    with LoopbackServer(objects) as server:
        urls = write_truth(rows, server.base_url, run_dir.parent / f"{run_dir.name}-urls.parquet")
        run_pipeline(recipe, urls, run_dir)
    return urls


def joined(run_dir: Path, urls: Path) -> list[dict]:
    """Truth rows with the run's decision (keep, reason, dup_of) and signals (clip_score, phash, lang)."""
    truth = pq.read_table(urls).to_pylist()
    decisions = {d["url"]: d for d in pq.read_table(run_dir / "decisions").to_pylist()}
    samples = {
        s["url"]: s
        for s in pq.read_table(
            run_dir / "samples", columns=["url", "clip_score", "phash", "lang", "lang_score", "script", "lang_chars"]
        ).to_pylist()
    }
    if len(decisions) != len(truth):
        raise RuntimeError(f"{len(decisions)} decisions for {len(truth)} input rows")
    return [{**t, **{k: decisions[t["url"]][k] for k in ("key", "keep", "reason")},
             "dup_of_run": decisions[t["url"]]["dup_of"], **samples.get(t["url"], {})} for t in truth]  # fmt: skip


def redecided(run_dir: Path, rows: list[dict], overrides: list[str], tuned: list[str]) -> list[dict]:
    """``rows`` with keep / reason as the quality recipe with the ``tuned`` settings plus ``overrides`` decides
    from the run's stored signals (curate.decide.decide, the product code; nothing is annotated again)."""
    from curate import storage
    from curate.decide import decide
    from curate.recipe import load_recipe

    out = Path(tempfile.mkdtemp(prefix="redecide-"))
    try:
        policies = load_recipe(RECIPE, tuned + overrides).decide
        decide(storage.files(str(run_dir / "samples")), policies, out / "decisions", str(run_dir / "embeddings"))
        decisions = {d["key"]: d for d in pq.read_table(out / "decisions").to_pylist()}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return [{**r, "keep": decisions[r["key"]]["keep"], "reason": decisions[r["key"]]["reason"],
             "dup_of_run": decisions[r["key"]]["dup_of"]} for r in rows]  # fmt: skip


def clip_kept_share(rows: list[dict]) -> float:
    """Share of the rows that reached the clip_score policy (no earlier policy took them) that it kept."""
    order = policy_order()
    at = order["low_clip_score"]
    reached = [r for r in rows if r["clip_score"] is not None and (r["reason"] is None or order[r["reason"]] >= at)]
    return sum(r["reason"] != "low_clip_score" for r in reached) / len(reached)


def relative_overrides(rows: list[dict]) -> list[str]:
    """The clip_score policy on the relative (CSLS) score, keeping the same share of the rows it sees as the
    plain cosine at ``min_score`` kept in ``rows``: the two rankings compared at one operating point."""
    return ["decide.clip_score.relative=true", "decide.clip_score.min_score=null",
            f"decide.clip_score.keep_top={clip_kept_share(rows):.6f}"]  # fmt: skip


def language_only(rows: list, variants: dict[str, list[str]]) -> dict:
    """The language filter alone (``--only language``): the pool's captions through the language stage
    (in process, no Ray, no download) and the recipe's language policy per variant; every row with an
    image reaches the policy (no earlier filter takes any). Per variant: :func:`language_summary`."""
    import pyarrow as pa

    from curate.decide import decide
    from curate.recipe import load_recipe

    rows = [r for r in rows if r.defect not in (*BROKEN, "boilerplate")]  # boilerplate: caption_boilerplate first
    keys = [f"{i:06d}" for i in range(len(rows))]
    table = pa.table({"key": keys, "url": [r.path for r in rows], "caption": [r.caption for r in rows],
                      "status": ["success"] * len(rows), "width": [300] * len(rows), "height": [300] * len(rows),
                      "decode_error": pa.nulls(len(rows), pa.string())})  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix="language-only-"))
    try:
        stage = next(s for s in load_recipe(RECIPE).annotate if s.name == "language")  # the recipe's settings
        pq.write_table(stage(table), out / "samples.parquet")
        result = {}
        for name, overrides in variants.items():
            policies = [p for p in load_recipe(RECIPE, overrides).decide if p.name == "language"]
            decide(str(out / "samples.parquet"), policies, out / name)
            reasons = dict(zip(*pq.read_table(out / name, columns=["key", "reason"]).to_pydict().values(), strict=True))
            decided = [{"defect": r.defect, "reason": reasons[k]} for k, r in zip(keys, rows, strict=True)]
            result[name] = {"overrides": overrides, "language": language_summary(decided)}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return result


def language_summary(rows: list[dict]) -> dict:
    """The language goal's numbers: English rows (every kind but non_english) that reached the language
    policy and were rejected by it, and the non-English rows rejected by it (recall and precision)."""
    order = policy_order()
    reached = [r for r in rows if r["reason"] is None or order[r["reason"]] >= order["wrong_language"]]
    english = [r for r in reached if r["defect"] != "non_english"]
    foreign = [r for r in rows if r["defect"] == "non_english"]
    hit = [r for r in rows if r["reason"] == "wrong_language"]
    return {
        "english_reached": len(english),
        "english_wrongly_rejected": _share(english, lambda r: r["reason"] == "wrong_language"),
        "non_english": len(foreign),
        "non_english_recall": _share(foreign, lambda r: r["reason"] == "wrong_language"),
        "precision": _share(hit, lambda r: r["defect"] == "non_english"),
    }


def policy_order() -> dict[str, int]:
    """Reason code -> position of the policy that gives it (availability first, then the recipe's)."""
    from curate.decide.thresholds import Availability
    from curate.recipe import load_recipe

    policies = [Availability(), *load_recipe(RECIPE).decide]
    return {reason: i for i, policy in enumerate(policies) for reason in policy.reasons}


def kind_table(rows: list[dict]) -> list[dict]:
    """Per noise kind: rows, expected reason, precision and recall of that reason, recall among the rows
    that reached its policy (no earlier policy took them), recall of any rejection."""
    order = policy_order()
    by_reason = Counter(r["reason"] for r in rows if r["reason"])
    right = Counter(r["reason"] for r in rows if r["reason"] and r["reason"] == r["expected_reason"])
    out = []
    for kind in NOISE:
        mine = [r for r in rows if r["defect"] == kind]
        reason = NOISE[kind][1]
        hit = sum(r["reason"] == reason for r in mine)
        reached = [r for r in mine if r["reason"] is None or order[r["reason"]] >= order[reason]]
        misses = Counter(_outcome(r) for r in mine if r["reason"] != reason)
        missed_details = Counter(r["detail"] for r in mine if r["reason"] != reason)
        out.append(
            {
                "kind": kind,
                "rows": len(mine),
                "reason": reason,
                "precision": right[reason] / by_reason[reason] if by_reason[reason] else None,
                "recall": hit / len(mine) if mine else None,
                "recall_reached": hit / len(reached) if reached else None,
                "recall_any": sum(not r["keep"] for r in mine) / len(mine) if mine else None,
                "misses": dict(misses.most_common()),
                "missed_details": dict(missed_details.most_common(12)),
            }
        )
    return out


def _share(rows: list[dict], predicate) -> float | None:
    return sum(map(predicate, rows)) / len(rows) if rows else None


def _outcome(row: dict) -> str:
    return "kept" if row["keep"] else row["reason"]


def clean_summary(rows: list[dict]) -> dict:
    """The clean rows' false rejections, by reason; originals rejected in favour of their own copy."""
    clean = [r for r in rows if r["defect"] is None]
    rejected = Counter(r["reason"] for r in clean if not r["keep"])
    copy_keys = {r["key"] for r in rows if r["dup_of"]}
    swapped = sum(1 for r in clean if r["dup_of_run"] in copy_keys)
    return {
        "rows": len(clean),
        "false_rejection_rate": sum(rejected.values()) / len(clean),
        "by_reason": dict(rejected.most_common()),
        "originals_rejected_for_their_copy": swapped,
    }


def language_diagnostics(rows: list[dict]) -> dict:
    """Clean rows called non-English, by caption template; and what rejecting non-English only at
    fastText scores >= t would give (precision, recall of non_english rows), from the stored signals."""
    clean = [r for r in rows if r["defect"] is None and r["lang"] is not None]
    by_template = Counter(r["detail"] for r in clean if r["lang"] != "en")
    totals = Counter(r["detail"] for r in clean)
    scored = [r for r in rows if r["lang"] is not None and r["reason"] in (None, "wrong_language", "low_clip_score",
              "dup_exact", "dup_near")]  # fmt: skip
    what_if = {}
    for t in (0.0, 0.3, 0.5, 0.7, 0.9):
        hit = [r for r in scored if r["lang"] != "en" and r["lang_score"] >= t]
        right = sum(r["defect"] == "non_english" for r in hit)
        n_kind = sum(r["defect"] == "non_english" for r in scored)
        what_if[str(t)] = {"precision": right / len(hit) if hit else None, "recall": right / n_kind if n_kind else None}
    return {
        "clean_not_en_by_template": {
            t: f"{by_template[t]}/{totals[t]}" for t in sorted(totals, key=lambda t: -by_template[t])
        },
        "reject_only_confident_non_english": what_if,
    }


def clip_diagnostics(
    rows: list[dict], matched_val: np.ndarray, shuffled_val: np.ndarray, min_score: float, seen: set[str]
) -> dict:
    """Separability of the CLIP score: on the seed set's held-out pairs, on the pool, and the recall of
    mismatched captions on images of emoji the seed set has (in another style) or has not."""
    clean = np.array([r["clip_score"] for r in rows if r["defect"] is None and r["clip_score"] is not None])
    mism = np.array([r["clip_score"] for r in rows if r["defect"] == "mismatched" and r["clip_score"] is not None])
    recall = {}
    for label, want in (("seen", True), ("unseen", False)):
        mine = [r for r in rows if r["defect"] == "mismatched" and (r["concept"] in seen) == want]
        recall[label] = {"rows": len(mine), "recall": _share(mine, lambda r: r["reason"] == "low_clip_score")}
    reached = [r for r in rows if r["clip_score"] is not None and r["reason"] in (None, "low_clip_score")]
    what_if = {}
    for loss in (0.01, 0.02, 0.05, 0.1):
        t = calibrate(matched_val, loss)
        hit = [r for r in reached if r["clip_score"] < t]
        right = sum(r["defect"] == "mismatched" for r in hit)
        n_kind = sum(r["defect"] == "mismatched" for r in reached)
        what_if[str(loss)] = {"min_score": t, "precision": right / len(hit) if hit else None,
                              "recall": right / n_kind if n_kind else None}  # fmt: skip
    return {
        "mismatched_recall_by_emoji_in_seed_set": recall,
        "min_score_by_validation_loss": what_if,
        "min_score": min_score,
        "validation_pairs": len(matched_val),
        "validation_auc": auc(matched_val, shuffled_val),
        "validation_mismatch_recall": float((shuffled_val < min_score).mean()),
        "pool_auc_clean_vs_mismatched": auc(clean, mism) if len(clean) and len(mism) else None,
        "pool_clean_below_min_score": float((clean < min_score).mean()) if len(clean) else None,
        "pool_mismatched_below_min_score": float((mism < min_score).mean()) if len(mism) else None,
    }


def phash_diagnostics(rows: list[dict], k: int) -> dict:
    """pHash distances: each near copy to its original, and the closest pairs of distinct images."""
    from curate.decide.neardup import near_pairs

    by_url = {r["url"]: r for r in rows}
    copy_d = [
        _bits(r["phash"], by_url[r["dup_of"]]["phash"])
        for r in rows
        if r["defect"] == "dup_near" and r["phash"] is not None and by_url[r["dup_of"]]["phash"] is not None
    ]
    distinct = [r for r in rows if r["phash"] is not None and r["defect"] not in ("dup_exact", "dup_near")]
    hashes = np.array([r["phash"] for r in distinct], np.uint64)
    pairs = near_pairs(hashes, k)
    return {
        "k": k,
        "near_copy_distance": _quantiles(copy_d),
        "near_copies_within_k": float(np.mean(np.array(copy_d) <= k)) if copy_d else None,
        "distinct_images": len(distinct),
        "distinct_pairs_within_k": len(pairs),
        "distinct_pairs_within_k_examples": [
            [distinct[i]["caption"], distinct[j]["caption"], _bits(distinct[i]["phash"], distinct[j]["phash"])]
            for i, j in pairs[:8].tolist()
        ],
    }


def _bits(a: int, b: int) -> int:
    return int(a ^ b).bit_count()


def _quantiles(values: list[int]) -> dict:
    if not values:
        return {}
    q = np.quantile(values, [0.5, 0.9, 0.99, 1.0])
    return {"median": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(q[3])}


def _seed_sizes(seed_set) -> dict:
    return {
        name: {"train": part.n_train, "val": part.n_val}
        for name, part in zip(("artists", "holdout"), seed_set.parts, strict=True)
    }


def print_tables(result: dict) -> None:
    """The per-kind table, the clean rows, and the CLIP and pHash diagnostics (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    table = Table(title=f"filter quality: {result['n']} rows, seed {result['seed']} ({result['wall_s']:.0f} s)")
    for col in (
        "noise kind",
        "rows",
        "expected reason",
        "precision",
        "recall",
        "recall (reached)",
        "recall (any)",
        "misses",
    ):
        table.add_column(col, justify="left" if col in ("noise kind", "expected reason", "misses") else "right")
    for k in result["kinds"]:
        misses = ", ".join(f"{v} {r}" for r, v in list(k["misses"].items())[:3])
        goal = " *" if k["kind"] in GOAL_KINDS else ""
        table.add_row(k["kind"] + goal, str(k["rows"]), k["reason"], _f(k["precision"]), _f(k["recall"]),
                      _f(k["recall_reached"]), _f(k["recall_any"]), misses)  # fmt: skip
    c = result["clean"]
    reasons = ", ".join(f"{v} {r}" for r, v in c["by_reason"].items())
    table.add_row("clean", str(c["rows"]), "(kept)", "", "", "", f"{c['false_rejection_rate']:.3f} rejected", reasons)
    console.print(table)
    console.print(f"* goal: precision and recall >= {GOAL}")
    compare = Table(title="before (old defaults) / after (the recipe): precision and recall per noise kind")
    for col in ("noise kind", "expected reason", *(f"{v} {m}" for v in result["variants"] for m in ("P", "R"))):
        compare.add_column(col, justify="left" if col in ("noise kind", "expected reason") else "right")
    for i, k in enumerate(result["kinds"]):
        cells = [_f(result["variants"][v]["kinds"][i][m]) for v in result["variants"] for m in ("precision", "recall")]
        compare.add_row(k["kind"], k["reason"], *cells)
    console.print(compare)
    for name, v in result["variants"].items():
        lang = v["language"]
        console.print(
            f"language, {name}: English wrongly rejected {_f(lang['english_wrongly_rejected'])} of "
            f"{lang['english_reached']}; non-English recall {_f(lang['non_english_recall'])} of "
            f"{lang['non_english']}, precision {_f(lang['precision'])}"
        )
    clip, ph = result["clip"], result["phash"]
    console.print(
        f"CLIP filter: min_score {clip['min_score']:.4f} (rejects {result['max_clean_loss']:.0%} of "
        f"{clip['validation_pairs']} held-out Noto/OpenMoji true pairs); AUC true vs shuffled: validation "
        f"{clip['validation_auc']:.3f} (other artists {clip['validation_auc_other_artists']:.3f}), "
        f"pool {_f(clip['pool_auc_clean_vs_mismatched'])}"
    )
    console.print(
        f"pHash: near_dedup k = {ph['k']} (calibrated on the seed set); near copy to original {ph['near_copy_distance']}; "
        f"{ph['distinct_pairs_within_k']} pairs of distinct images within k among {ph['distinct_images']:,}"
    )
    what_if = ", ".join(
        f"t={t}: P {_f(v['precision'])} R {_f(v['recall'])}"
        for t, v in result["language"]["reject_only_confident_non_english"].items()
    )
    console.print(f"wrong_language if only fastText scores >= t were rejected: {what_if}")
    clip_if = ", ".join(
        f"{float(k):.0%}: P {_f(v['precision'])} R {_f(v['recall'])}"
        for k, v in result["clip"]["min_score_by_validation_loss"].items()
    )
    console.print(
        f"low_clip_score (P, R among the rows reaching it) with min_score rejecting x of the held-out true pairs: {clip_if}"
    )
    seen = result["clip"]["mismatched_recall_by_emoji_in_seed_set"]
    console.print(
        "low_clip_score recall on mismatched rows whose emoji the seed set has / has not: "
        + ", ".join(f"{k} {_f(v['recall'])} ({v['rows']} rows)" for k, v in seen.items())
    )
    for k in result["kinds"]:
        if k["missed_details"] and k["kind"] in ("boilerplate", "non_english", "dup_near"):
            console.print(f"{k['kind']} missed: {k['missed_details']}")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _language_only_main(args: argparse.Namespace, rows: list, start: float) -> None:
    variants = language_only(rows, {**BEFORE, "after": []})
    for name, v in variants.items():
        lang = v["language"]
        print(f"{args.corpus} seed {args.seed}, {name}: English wrongly rejected {_f(lang['english_wrongly_rejected'])} "
              f"of {lang['english_reached']}; non-English recall {_f(lang['non_english_recall'])} of "
              f"{lang['non_english']}, precision {_f(lang['precision'])}")  # fmt: skip
    result = {"n": len(rows), "seed": args.seed, "corpus": args.corpus, "only": "language", "variants": variants,
              "wall_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    suffix = "" if args.corpus == "emoji" else f"-{args.corpus}"
    out = Path(args.out or f"benchmarks/results/filter_quality{suffix}-language-seed{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--corpus", choices=sorted(CORPORA), default="emoji", help="pool sources (quality_sources.CORPORA)"
    )
    parser.add_argument("--n", type=int, help=f"rows in the pool (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0, help="pool, seed set and filter training seed (run two)")
    parser.add_argument("--steps", type=int, default=FitSettings.steps, help="projection training steps")
    parser.add_argument("--max-clean-loss", type=float, default=0.02, help="share of true pairs min_score rejects")
    parser.add_argument(
        "--max-false-merge",
        type=float,
        default=0.02,
        help="share of pool images near_dedup's k may merge falsely (calibrated on the seed set)",
    )
    parser.add_argument("--cache", type=Path, default=default_cache(), help="corpus, seed set and model cache")
    parser.add_argument("--keep-run", type=Path, help="run directory to write and keep (default: a temp dir)")
    parser.add_argument(
        "--only", choices=["language"], help="language: the language filter alone on the pool's captions (no CLIP, Ray)"
    )
    parser.add_argument("--out", help="JSON result (default benchmarks/results/filter_quality[-CORPUS]-seedS.json)")
    args = parser.parse_args()
    args.n = args.n or DEFAULT_N[args.corpus]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    start = time.perf_counter()
    timings = {}
    objects, rows = build_quality_corpus(args.cache, args.n, args.seed, corpus=args.corpus)
    if args.only == "language":
        return _language_only_main(args, rows, start)
    seed_set = build_seed_set(args.cache, args.seed, corpus=args.corpus)
    seen = {p.concept for p in load_catalogue(SEED_SOURCES, args.cache)}  # emoji the filter saw drawn otherwise
    timings["corpus_s"] = time.perf_counter() - start
    fit = FitSettings(steps=args.steps, seed=args.seed)
    name = f"filter-seed{args.seed}" if args.corpus == "emoji" else f"filter-{args.corpus}-seed{args.seed}"
    model_dir = train_filter_model(seed_set, args.cache / name, fit)
    val_artists = validation_scores(model_dir, seed_set.artists, args.seed)
    matched, shuffled = validation_scores(model_dir, seed_set.holdout, args.seed)
    min_score = calibrate(matched, args.max_clean_loss)
    near = calibrate_k(seed_set, sum(r.defect not in BROKEN for r in rows), args.max_false_merge, args.seed)
    timings["filter_model_s"] = time.perf_counter() - start - timings["corpus_s"]
    print(f"pool {len(rows):,} rows {dict(noise_counts(args.n))}; seed set {_seed_sizes(seed_set)}")
    tuned = [f"decide.clip_score.min_score={min_score:.6f}", *near_overrides(near)]
    print(f"CLIP filter {model_dir}: min_score {min_score:.4f}; near_dedup k = {near['k']} unchecked, "
          f"{near['verified']['k']} with verify_colour {near['verified']['verify_colour']}")  # fmt: skip
    tmp = None if args.keep_run else Path(tempfile.mkdtemp(prefix="quality-run-"))
    run_dir = args.keep_run or tmp / "run"
    try:
        t = time.perf_counter()
        urls = run_recipe(objects, rows, model_dir, tuned, run_dir)
        timings["pipeline_s"] = time.perf_counter() - t
        data = joined(run_dir, urls)
        overrides = {**BEFORE, "relative_clip": relative_overrides(data)}
        overrides["before"] = [*overrides["before"], *near_overrides(near, verified=False)]
        variants = {name: redecided(run_dir, data, o, tuned) for name, o in overrides.items()}
        variants["after"] = data
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "n": len(rows),
        "seed": args.seed,
        "corpus": args.corpus,
        "sources": list(CORPORA[args.corpus]),
        "seed_set": {"artists": list(SEED_SOURCES), **_seed_sizes(seed_set)},
        "filter_training": asdict(fit),
        "max_clean_loss": args.max_clean_loss,
        "kinds": kind_table(data),
        "clean": clean_summary(data),
        "clip": {
            **clip_diagnostics(data, matched, shuffled, min_score, seen),
            "validation_auc_other_artists": auc(*val_artists),
        },
        "language": language_diagnostics(data),
        "variants": {
            name: {
                "overrides": overrides.get(name, []),
                "kinds": kind_table(v),
                "clean": clean_summary(v),
                "language": language_summary(v),
            }
            for name, v in variants.items()
        },
        "phash": {**phash_diagnostics(data, near["verified"]["k"]), "calibration": near},
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "wall_s": round(time.perf_counter() - start, 1),
        "cores": len(os.sched_getaffinity(0)),
    }
    print_tables(result)
    suffix = "" if args.corpus == "emoji" else f"-{args.corpus}"
    out = Path(args.out or f"benchmarks/results/filter_quality{suffix}-seed{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
