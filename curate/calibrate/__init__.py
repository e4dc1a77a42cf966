"""``curate calibrate RUN``: the dedup thresholds for this run's images, measured instead of guessed.

Known duplicates (``--duplicates``: pairs of the run's keys; by default a near copy of each of a
seeded sample of the run's images: re-encoded at JPEG q25-50 or q75-90, resized, cropped 0.5-2 % a
side, watermarked, brightened 5-12 %) give the recall of each candidate value; known-distinct
images (``--distinct``; by default the same sample, one image per sha256) give its false pairs,
extrapolated to the pool's size (they grow as n^2, see :mod:`curate.calibrate.measure`).

Recommended: ``decide.near_dedup.k`` from pHash distances, and ``decide.semantic_dedup.eps`` from
the CLIP image embeddings of the run's own clip stage (the same model, loaded the same way). The
table and the recommendation are written to ``RUN/calibration.json``.

Without ``--distinct`` the run's own images are the negatives, and the run's own duplicates are among
their pairs: the pairs at the strictest value (k = 0: distinct images almost never share a pHash), over
the known duplicates' recall there, estimate how many there are, and that many times the recall at each
value are not counted as false (:func:`curate.calibrate.measure.own_pairs`). Measured on the emoji
quality corpus (1,395 decoded images, 8 % near copies; ``curate.demo.emoji_corpus``): false-merge share
at k = 6 / 8 estimated 0.0071 / 0.032, true 0.0079 / 0.029 (without the correction 0.15 / 0.18).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import track

from curate import storage
from curate.calibrate import measure
from curate.calibrate.inputs import (
    distinct_images,
    duplicate_pairs,
    pool_size,
    read_samples,
    run_images,
    sample_rows,
    samples_columns,
)
from curate.console import console
from curate.errors import CalibrationError
from curate.io import write_json

MAX_FALSE_MERGE = 0.01
"""Default share of the pool a recommended threshold may merge falsely (see the CLI's ``--max-false-merge``)."""
DEFAULT_DUP_SHARE = 0.05
"""Duplicate share of the pool assumed for the precision column when the run's decisions rejected none."""
DUP_REASONS = ("dup_near", "dup_semantic")
STALE_COLOUR = (
    "RUN/samples has no colour_sig (annotated before the image stage recorded it): decide checks no colour on this "
    "run until annotate runs again, so the --set line uses k alone"
)


@dataclass
class Probe:
    """The calibration images: known duplicate pairs (``left[i]``, ``right[i]``) and known-distinct ``distinct``."""

    left: list[bytes]
    right: list[bytes]
    distinct: list[bytes]
    sources: dict[str, str] = field(default_factory=dict)
    distinct_is_left: bool = False  # the default: the sample's originals are also the negatives
    negatives_from_run: bool = True  # the negatives are the run's own images (its duplicates among them)


def calibrate_run(
    run_dir: str,
    distinct: str | None = None,
    duplicates: str | None = None,
    n: int = 2000,
    seed: int = 0,
    max_false_merge: float = MAX_FALSE_MERGE,
) -> dict:
    """Measure near_dedup.k and semantic_dedup.eps for ``run_dir``, write RUN/calibration.json, return it."""
    start = time.perf_counter()
    run_dir = str(run_dir)
    recipe = run_recipe(run_dir)
    pool = pool_size(run_dir)
    samples = read_samples(run_dir, 2 * n, seed)  # n for the probe, n more where --duplicates' keys are left out
    probe = build_probe(run_dir, samples, distinct, duplicates, n, seed)
    share, share_source = dup_share(run_dir, pool)
    result = {
        "run": run_dir,
        "seed": seed,
        "n": n,
        "max_false_merge": max_false_merge,
        "pool_images": pool,
        "dup_share": share,
        "dup_share_source": share_source,
        "positives": {"pairs": len(probe.left), "source": probe.sources["positives"]},
        "negatives": {"images": len(probe.distinct), "source": probe.sources["negatives"]},
    }
    result["near_dedup"] = near_dedup_section(probe, pool, share, max_false_merge)
    if "table" in result["near_dedup"]["verify_colour"] and "colour_sig" not in samples_columns(run_dir):
        result["near_dedup"]["verify_colour"]["note"] = STALE_COLOUR
    result["semantic_dedup"] = semantic_section(recipe, probe, pool, share, max_false_merge)
    result["overrides"] = overrides(result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(storage.join(run_dir, "calibration.json"), result)
    return result


def run_recipe(run_dir: str):
    """The run's recipe as its manifest records it; the run must have finished annotate."""
    from curate.manifest import Manifest
    from curate.recipe import build_recipe

    if not storage.isfile(storage.join(run_dir, "manifest.json")):
        raise CalibrationError(f"{run_dir}: no manifest.json, so not a curate run directory (`curate run` makes one).")
    manifest = Manifest(run_dir)
    if not manifest.done("annotate") or "recipe" not in manifest.data:
        raise CalibrationError(f"{run_dir}: annotate has not finished; complete it with `curate run` first.")
    return build_recipe(manifest.data["recipe"], manifest.data.get("recipe_source", "<recipe>"))


def build_probe(
    run_dir: str, samples: pa.Table, distinct: str | None, duplicates: str | None, n: int, seed: int
) -> Probe:
    """Known duplicates and known-distinct images from the trusted sets given, else from the run itself."""
    pool = samples  # one row per distinct image already
    named: set[str] = set()
    if duplicates:
        left, right, named = duplicate_pairs(duplicates, run_dir)
        sources = {"positives": f"--duplicates {duplicates}"}
    else:
        left = run_images(run_dir, sample_rows(pool, n, seed))
        right = _progress_list(measure.near_copies(left, seed), len(left), "making near copies")
        sources = {"positives": f"a near copy of each of {len(left)} sampled run images"}
    if distinct:
        negatives, sources["negatives"] = distinct_images(distinct, n, seed), f"--distinct {distinct}"
    elif duplicates:
        negatives = run_images(run_dir, sample_rows(pool, n, seed, exclude=named))
        sources["negatives"] = f"{len(negatives)} sampled run images (distinct sha256, none of the pairs' keys)"
    else:
        negatives, sources["negatives"] = left, "the sampled run images (distinct sha256)"
    if len(left) < 1 or len(negatives) < 2:
        raise CalibrationError(f"{run_dir}: too few decoded images to calibrate on ({len(left)} pairs, "
                               f"{len(negatives)} distinct images); pass --duplicates and --distinct sets.")  # fmt: skip
    return Probe(left, right, negatives, sources, not distinct and not duplicates, negatives_from_run=not distinct)


def _progress_list(items, total: int, what: str) -> list:
    """``items`` (an iterable) as a list, with a progress bar on the console."""
    return list(track(items, description=what, total=total, console=console, transient=True))


@dataclass
class Hashed:
    """The image stage's signals of calibration images (:func:`curate.signals.image.measure_image`, the same decode)."""

    phash: np.ndarray  # uint64; 0 where ``ok`` is False
    ok: np.ndarray  # decoded
    colour: np.ndarray | None  # (n, d) colour signatures (NaN rows where undecodable); None: the stage records none


def image_signals(images: list[bytes], what: str) -> Hashed:
    """pHash and colour signature of each image, as annotate's image stage computes them."""
    from curate.images import MAX_DECODE_PIXELS
    from curate.signals.image import measure_image

    rows = [measure_image(d, MAX_DECODE_PIXELS) for d in track(images, f"image signals: {what}", console=console,
                                                                 transient=True)]  # fmt: skip
    ok = np.array([r.get("phash") is not None for r in rows], bool)
    hashes = np.array([r.get("phash") or 0 for r in rows], np.uint64)
    sigs = [r.get("colour_sig") for r in rows]
    width = next((len(sig) for sig in sigs if sig is not None), 0)
    colour = np.array([sig if sig is not None else [np.nan] * width for sig in sigs], np.float32) if width else None
    return Hashed(hashes, ok, colour)


def near_dedup_section(probe: Probe, pool: int, share: float, max_false_merge: float) -> dict:
    """The near_dedup.k table and recommendation from the probe's pHashes, and the verify_colour one."""
    left, right = image_signals(probe.left, "known duplicates"), image_signals(probe.right, "their pairs")
    distinct = left if probe.distinct_is_left else image_signals(probe.distinct, "distinct images")
    pos = left.ok & right.ok
    bits = measure.hamming(left.phash[pos], right.phash[pos])
    rows = measure.k_table(bits, distinct.phash[distinct.ok], pool, share, own=probe.negatives_from_run)
    best = measure.recommend(rows, max_false_merge)
    own = measure.own_pairs(rows[0].observed_pairs, rows[0].recall) if probe.negatives_from_run else 0.0
    closest = measure.hamming_histogram(distinct.phash[distinct.ok]).nonzero()[0]
    return {
        "column": "phash",
        "table": [asdict(r) for r in rows],
        "recommended": int(best.value) if best else None,
        "duplicate_distance": measure.quantiles(bits.tolist()),
        "closest_distinct_distance": int(closest[0]) if len(closest) else None,
        "own_duplicate_pairs": round(own, 1),
        "undecodable": int((~pos).sum() + (0 if probe.distinct_is_left else (~distinct.ok).sum())),
        "verify_colour": verify_section(left, right, distinct, (pool, share, max_false_merge, own), best),
    }


def verify_section(left: Hashed, right: Hashed, distinct: Hashed, scale: tuple, plain) -> dict:
    """near_dedup.verify_colour: per limit, the k it allows and its recall; ``scale`` is (pool, dup share, max
    false merge, the run's own duplicate pairs among the negatives); ``plain`` the recommendation without the check."""
    if left.colour is None or right.colour is None or distinct.colour is None:
        return {"skipped": "the image stage records no colour_sig in this curate version: verify_colour not calibrated"}
    from curate.images import colour_distance

    pos = left.ok & right.ok
    copy_bits = measure.hamming(left.phash[pos], right.phash[pos])
    copy_colour = colour_distance(left.colour[pos], right.colour[pos])
    hashes, sigs = distinct.phash[distinct.ok], distinct.colour[distinct.ok]
    i, j, pair_bits = measure.close_pairs(hashes, max(measure.K_CANDIDATES))
    pair_colour = colour_distance(sigs[i], sigs[j]) if len(i) else np.zeros(0, np.float32)
    rows = measure.verify_table(copy_bits, copy_colour, pair_bits, pair_colour, len(hashes), *scale)
    best = measure.recommend_verified(rows, plain)
    return {
        "table": rows,
        "recommended": best["verify_colour"] if best else None,
        "k": int(best["value"]) if best else None,
        "duplicate_colour_distance": measure.quantiles(copy_colour.tolist()),
    }


def semantic_section(recipe, probe: Probe, pool: int, share: float, max_false_merge: float) -> dict:
    """The semantic_dedup.eps table from the run's own CLIP model, or why it was skipped."""
    stage = next((s for s in recipe.annotate if s.name == "clip"), None)
    if stage is None:
        note = "the run has no clip stage (no embeddings to dedup on): eps not calibrated"
        console.print(f"semantic_dedup: {note}", markup=False)
        return {"skipped": note}
    stage.setup()
    left, right = embed(stage, probe.left, "known duplicates"), embed(stage, probe.right, "their pairs")
    distinct = left if probe.distinct_is_left else embed(stage, probe.distinct, "distinct images")
    cos = (left * right).sum(axis=1)
    rows = measure.eps_table(cos, distinct, pool, share, own=probe.negatives_from_run)
    best = measure.recommend(rows, max_false_merge)
    return {
        "column": "clip_image_emb",
        "model": stage.model_id,
        "table": [asdict(r) for r in rows],
        "recommended": best.value if best else None,
        "duplicate_cosine": measure.quantiles(cos.tolist()),
    }


def embed(stage, images: list[bytes], what: str) -> np.ndarray:
    """Unit CLIP image embeddings of ``images`` by the run's clip stage (a zero row for one that does not decode)."""
    from curate.decide.base import embedding_matrix

    size, parts = stage.config.batch_size, []
    for start in track(range(0, len(images), size), description=f"CLIP: {what}", console=console, transient=True):
        chunk = images[start : start + size]
        batch = pa.table({"image": pa.array(chunk, pa.binary()), stage.config.text_column: [""] * len(chunk)})
        column = stage.process(batch).column("clip_image_emb")
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        matrix = np.zeros((len(chunk), 0), np.float32)
        if valid.any():
            found = embedding_matrix(column.filter(pa.array(valid))).astype(np.float32)
            matrix = np.zeros((len(chunk), found.shape[1]), np.float32)
            matrix[valid] = found
        parts.append(matrix)
    x = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def dup_share(run_dir: str, pool: int) -> tuple[float, str]:
    """The pool's duplicate share for the precision column: the rows the run's decisions rejected as dup_near or
    dup_semantic, when any; else :data:`DEFAULT_DUP_SHARE`."""
    paths = storage.files(storage.join(run_dir, "decisions"))
    if paths and pool:
        import pyarrow.dataset as pads

        fsys, local = storage.arrow_paths(paths)
        reasons = pads.dataset(local, filesystem=fsys, format="parquet").to_table(columns=["reason"]).column(0)
        found = int(pc.sum(pc.is_in(reasons, pa.array(DUP_REASONS))).as_py() or 0)
        if found:
            return found / pool, f"measured: {found} rows the run's decisions rejected as {' or '.join(DUP_REASONS)}"
    return DEFAULT_DUP_SHARE, f"assumed {DEFAULT_DUP_SHARE} (the run's decisions rejected no duplicates)"


def overrides(result: dict) -> list[str]:
    """The ``--set`` items that apply the recommendations with ``curate decide RUN`` (none for a policy whose every
    value tried merges too many distinct images). With colour signatures, near_dedup's k is the one that goes with
    the recommended verify_colour, or verification is turned off when it costs recall."""
    near, items = result["near_dedup"], []
    verify = near.get("verify_colour", {})
    if "note" in verify:  # decide cannot check colour on this run: k alone, as measured without the check
        verify = {"skipped": verify["note"]}
    if verify.get("recommended") is not None:
        items += [f"decide.near_dedup.k={verify['k']}", f"decide.near_dedup.verify_colour={verify['recommended']}"]
    elif near["recommended"] is not None:
        items.append(f"decide.near_dedup.k={near['recommended']}")
        items += [] if "skipped" in verify else ["decide.near_dedup.verify_colour=null"]
    eps = result["semantic_dedup"].get("recommended")
    return items + ([f"decide.semantic_dedup.eps={eps}"] if eps is not None else [])


def print_result(result: dict) -> None:
    """The tables (the recommended row marked), the recommendation and the ``--set`` items, on stdout."""
    from rich.console import Console

    out = Console()
    pool, limit = result["pool_images"], result["max_false_merge"]
    for name, label in (("near_dedup", "k"), ("semantic_dedup", "eps")):
        section = result[name]
        if "table" not in section:
            continue
        out.print(_table(section, name, label, pool))
        if section["recommended"] is None:
            out.print(f"{name}.{label}: every value tried merges more than {limit:.1%} of the pool falsely: none is "
                      "recommended" + (" without verify_colour" if "table" in section.get("verify_colour", {}) else
                      f" (leave {name} out, or pass known-distinct images with --distinct)"), markup=False)  # fmt: skip
        if name == "near_dedup" and "table" in section["verify_colour"]:
            out.print(_verify_table(section["verify_colour"], pool))
            if "note" in section["verify_colour"]:
                out.print(f"near_dedup.verify_colour: {section['verify_colour']['note']}", markup=False)
    out.print(
        f"positives: {result['positives']['pairs']} pairs ({result['positives']['source']}); negatives: "
        f"{result['negatives']['images']} images ({result['negatives']['source']}); precision at duplicate share "
        f"{result['dup_share']:.3f} ({result['dup_share_source']}); limit: false merges <= {limit:.1%} of the pool",
        markup=False,
    )
    apply = " ".join(f"--set {s}" for s in result["overrides"])
    out.print(f"apply: curate decide {result['run']} {apply}", markup=False, soft_wrap=True)  # one line to copy


def _table(section: dict, name: str, label: str, pool: int):
    from rich.table import Table

    table = Table(title=f"{name}.{label}: recall on known duplicates, false merges at {pool:,} images")
    for column in (label, "recall", "false pairs", "false-merge share", "precision", ""):
        table.add_column(column, justify="right")
    for row in section["table"]:
        mark = "<- recommended" if row["value"] == section["recommended"] else ""
        precision = "-" if row["precision"] is None else f"{row['precision']:.3f}"
        table.add_row(f"{row['value']:g}", f"{row['recall']:.3f}", str(row["false_pairs"]),
                      f"{row['false_merge_share']:.4f}", precision, mark)  # fmt: skip
    return table


def _verify_table(section: dict, pool: int):
    from rich.table import Table

    table = Table(title=f"near_dedup.verify_colour: the k each limit allows, at {pool:,} images")
    for column in ("verify_colour", "k", "recall", "false pairs", "false-merge share", "precision", ""):
        table.add_column(column, justify="right")
    for row in section["table"]:
        mark = "<- recommended" if row["verify_colour"] == section["recommended"] else ""
        if row["value"] is None:
            table.add_row(f"{row['verify_colour']:g}", "none", "", "", "", "", mark)
            continue
        precision = "-" if row["precision"] is None else f"{row['precision']:.3f}"
        table.add_row(f"{row['verify_colour']:g}", f"{row['value']:g}", f"{row['recall']:.3f}", str(row["false_pairs"]),
                      f"{row['false_merge_share']:.4f}", precision, mark)  # fmt: skip
    return table
