"""Measures near-dup verification on real glyphs: pHash and colour-signature distances per pair kind,
and dup_near precision/recall for k and ``verify_colour`` (the defaults of ``NearDedupConfig``).

Images: every distinct Noto + OpenMoji glyph of the emoji corpus catalogue
(``curate.demo.emoji_sources.load_catalogue``), drawn two ways: ``composed`` (the quality corpus's own
``compose``: a named background, 45-90 % of the smaller side, JPEG or PNG) and ``plain`` (the glyph
centred on white, 256 px, PNG: clip-art as served, the hard case for pHash). Pair kinds:

- copy/<perturbation>: ``curate.calibrate.perturb.near_copy_bytes`` of an image (its PERTURBATIONS:
  JPEG q25-50, resize, 0.5-2 % crop per side, watermark overlay, brightness, resize + JPEG);
- colour_variant: two glyphs of one source whose English names differ only in a colour word
  ("red heart" / "green heart", "blue book" / "orange book"), drawn on the same canvas;
- skin_tone: a Noto glyph and its medium-dark skin-tone version, on the same canvas;
- distinct_nearest: each image and its pHash-nearest other glyph (all pairs, same drawing style).

Run from the repository root (needs the emoji corpus sources, see quality_setup.sh)::

    PYTHONPATH=. python benchmarks/verify_dedup.py --copies 1200 --out /tmp/verify.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import numpy as np
from PIL import Image

from curate.calibrate.perturb import PERTURBATIONS, near_copy_bytes
from curate.decide.neardup import all_row_pairs, components, near_pairs, representatives
from curate.demo.emoji_corpus import compose, encode
from curate.demo.emoji_sources import SOURCES, Pair, default_cache, glyph, load_catalogue
from curate.images import colour_distance, colour_signature, decode
from curate.signals.image import perceptual_hashes

GRIDS = (4, 6, 8)
COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "grey", "pink")
TONE = "\U0001f3fe"  # medium-dark skin tone


def features(body: bytes) -> tuple[int, dict[int, np.ndarray]]:
    """pHash and the colour signature at each grid size of encoded ``body`` (one decode)."""
    shown = decode(body)
    return perceptual_hashes(shown, False)["phash"], {g: colour_signature(shown, g) for g in GRIDS}


def plain(pair: Pair, cache: Path) -> Image.Image:
    """The glyph centred on white, 256 x 256."""
    canvas = Image.new("RGB", (256, 256), (255, 255, 255))
    g = glyph(pair, 200, cache)
    canvas.paste(g, ((256 - g.width) // 2, (256 - g.height) // 2), g)
    return canvas


def draw(pair: Pair, style: str, seed: int, cache: Path) -> Image.Image:
    return compose(pair, random.Random(seed), cache).pixels if style == "composed" else plain(pair, cache)


def colour_variants(pairs: list[Pair]) -> list[tuple[int, int]]:
    """Index pairs (same source) whose names are equal once a colour word is blanked out."""
    pattern = re.compile(r"\b(" + "|".join(COLOUR_WORDS) + r")\b")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(pairs):
        if len(pattern.findall(p.name)) == 1:
            groups.setdefault((p.source, pattern.sub("_", p.name)), []).append(i)
    return [(a, b) for g in groups.values() for j, a in enumerate(g) for b in g[j + 1 :]]


def skin_tones(pairs: list[Pair], limit: int) -> list[tuple[int, Pair]]:
    """(index, toned Pair) for Noto glyphs that take a skin-tone modifier."""
    import emoji
    from quality_sources import _noto_font

    font, out = _noto_font(), []
    for i, p in enumerate(pairs):
        toned = p.ident.replace("\ufe0f", "") + TONE
        if p.source == "noto" and toned in emoji.EMOJI_DATA and font.getbbox(toned)[2] <= 140:
            out.append((i, Pair("noto", toned, toned, p.name + ": medium-dark skin tone")))
    return out[:limit]


def measure(style: str, args: argparse.Namespace, cache: Path) -> dict:
    """Features of every glyph, its copies and variants in one drawing ``style``; the distance tables."""
    pairs = load_catalogue(SOURCES)
    images = [draw(p, style, args.seed * 100_003 + i, cache) for i, p in enumerate(pairs)]
    bodies = [encode(im, "PNG") if style == "plain" else encode(im, "JPEG", 90) for im in images]
    orig = [features(b) for b in bodies]
    rng = random.Random(args.seed)
    copies = []  # (original index, perturbation, features)
    for i in range(min(args.copies, len(pairs))):
        kind = PERTURBATIONS[i % len(PERTURBATIONS)]
        copies.append((i, kind, features(near_copy_bytes(images[i], kind, rng))))
    variants = [
        (a, features(encode(draw(pairs[b], style, args.seed * 100_003 + a, cache), "PNG")))
        for a, b in colour_variants(pairs)
    ]
    tones = [
        (i, features(encode(draw(t, style, args.seed * 100_003 + i, cache), "PNG")))
        for i, t in skin_tones(pairs, args.tones)
    ]
    hashes = np.array([h for h, _ in orig], np.uint64)
    sig = {g: np.stack([s[g] for _, s in orig]) for g in GRIDS}
    kinds: dict[str, list[tuple[int, dict]]] = {}
    for i, kind, (h, s) in copies:
        kinds.setdefault(f"copy/{kind}", []).append((_bits(hashes[i], h), _colour(sig, i, s)))
    kinds["colour_variant"] = [(_bits(hashes[a], h), _colour(sig, a, s)) for a, (h, s) in variants]
    kinds["skin_tone"] = [(_bits(hashes[a], h), _colour(sig, a, s)) for a, (h, s) in tones]
    nearest = _nearest(hashes)
    kinds["distinct_nearest"] = [
        (_bits(hashes[i], hashes[j]), _colour(sig, i, {g: sig[g][j] for g in GRIDS})) for i, j in enumerate(nearest)
    ]
    pool = _pool(hashes, sig, copies, variants)
    if args.dump:
        np.savez_compressed(
            f"{args.dump}-{style}.npz",
            family=pool["family"],
            hashes=pool["hashes"],
            **{f"sig{g}": v for g, v in pool["sig"].items()},
            names=np.array([p.name for p in pairs] + [f"copy:{k}" for _, k, _ in copies] + ["variant"] * len(variants)),
        )
    return {"images": len(pairs), "kinds": {k: _summary(v) for k, v in kinds.items()}, "pool": _pool_scores(pool, args)}


def _bits(a: int, b: int) -> int:
    return int(np.bitwise_count(np.uint64(a) ^ np.uint64(b)))


def _colour(sig: dict[int, np.ndarray], i: int, other: dict[int, np.ndarray]) -> dict:
    """Colour distances of signature row ``i`` to ``other``, per grid: ``colour_distance`` (worst quarter of
    2 x 2 windows) and the candidates it was chosen from: mean / worst quarter / max ΔE of single cells."""
    out = {}
    for g in GRIDS:
        cells = np.linalg.norm((sig[g][i] - other[g]).reshape(-1, 3), axis=1)
        worst = np.sort(cells)[-max(1, len(cells) // 4) :].mean()
        out |= {f"g{g}_mean": float(cells.mean()), f"g{g}_q4": float(worst), f"g{g}_max": float(cells.max())}
        out[f"g{g}_window"] = float(colour_distance(sig[g][i], other[g]))
    return out


def _nearest(hashes: np.ndarray) -> np.ndarray:
    """Each row's pHash-nearest other row (all pairs, in blocks)."""
    out = np.empty(len(hashes), np.int64)
    for s in range(0, len(hashes), 512):
        d = np.bitwise_count(hashes[s : s + 512, None] ^ hashes[None, :]).astype(np.int16)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = 99
        out[s : s + 512] = d.argmin(axis=1)
    return out


def _summary(rows: list[tuple[int, dict]]) -> dict:
    bits = np.array([b for b, _ in rows])
    out = {"n": len(rows), "phash": _quantiles(bits)}
    for name in rows[0][1] if rows else ():
        out[name] = _quantiles(np.array([c[name] for _, c in rows]))
    return out


def _quantiles(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0]) if len(x) else []
    return dict(zip(("min", "p1", "p10", "median", "p90", "p99", "max"), np.round(q, 2).tolist(), strict=False))


def _pool(hashes, sig, copies, variants) -> dict:
    """The dedup pool: every glyph (its own family), its copies (the glyph's family), colour variants."""
    family = list(range(len(hashes)))
    h, s = [hashes], {g: [sig[g]] for g in GRIDS}
    for i, _, (ch, cs) in copies:
        family.append(i)
        h.append(np.array([ch], np.uint64))
        for g in GRIDS:
            s[g].append(cs[g][None])
    for n, (_, (vh, vs)) in enumerate(variants):
        family.append(len(hashes) + n)
        h.append(np.array([vh], np.uint64))
        for g in GRIDS:
            s[g].append(vs[g][None])
    return {
        "family": np.array(family),
        "hashes": np.concatenate(h),
        "sig": {g: np.concatenate(v) for g, v in s.items()},
    }


def _pool_scores(pool: dict, args: argparse.Namespace) -> list[dict]:
    """dup_near precision / recall over the pool for each k, grid and ``verify_colour`` (as near_dedup does it:
    every row pair of the hash pairs, checked with ``colour_distance``, connected components)."""
    family, hashes, sig = pool["family"], pool["hashes"], pool["sig"]
    expected = len(family) - len(np.unique(family))
    rank = np.random.default_rng(args.seed).permutation(len(family))  # which copy is kept: arbitrary
    out = []
    for k in args.k:
        pairs = all_row_pairs(hashes, near_pairs(hashes, k))
        for grid in GRIDS:
            dist = colour_distance(sig[grid][pairs[:, 0]], sig[grid][pairs[:, 1]])
            for t in [None, *args.thresholds]:
                kept = pairs if t is None else pairs[dist <= t]
                rep = representatives(components(len(family), kept), rank)
                gone = np.flatnonzero(rep != np.arange(len(family)))
                right = int((family[gone] == family[rep[gone]]).sum())
                out.append(
                    {
                        "k": k,
                        "grid": grid,
                        "verify_colour": t,
                        "rejected": len(gone),
                        "right": right,
                        "precision": round(right / max(1, len(gone)), 4),
                        "recall": round(right / max(1, expected), 4),
                        "expected": int(expected),
                        "pairs": len(pairs),
                        "verified": len(kept),
                    }
                )
    return out


def semantic(args: argparse.Namespace, cache: Path) -> dict:
    """dup_semantic precision / recall on the composed pool (glyphs, their copies, colour variants; captions
    are the English names) with ``args.clip`` image embeddings: connected groups (before), no chains, and
    no chains + caption veto, for each eps."""
    import pyarrow as pa

    from curate.decide.semantic import caption_keys, semantic_groups
    from curate.signals.clip import ClipScorer

    pairs = load_catalogue(SOURCES)
    images = [draw(p, "composed", args.seed * 100_003 + i, cache) for i, p in enumerate(pairs)]
    bodies = [encode(im, "JPEG", 90) for im in images]
    captions = [f"{p.name[0].upper()}{p.name[1:]}." for p in pairs]
    family = list(range(len(pairs)))
    rng = random.Random(args.seed)
    for i in range(min(args.copies, len(pairs))):
        bodies.append(near_copy_bytes(images[i], PERTURBATIONS[i % len(PERTURBATIONS)], rng))
        captions.append(captions[i])
        family.append(i)
    for n, (a, b) in enumerate(colour_variants(pairs)):
        bodies.append(encode(draw(pairs[b], "composed", args.seed * 100_003 + a, cache), "PNG"))
        captions.append(f"{pairs[b].name[0].upper()}{pairs[b].name[1:]}.")
        family.append(len(pairs) + n)
    stage = ClipScorer(model=args.clip, batch_size=64)
    stage.setup()
    emb = []
    for lo in range(0, len(bodies), 64):
        batch = pa.table({"image": bodies[lo : lo + 64], "caption": captions[lo : lo + 64]})
        emb += stage.process(batch).column("clip_image_emb").to_pylist()
    x = np.array(emb, np.float32)
    fam, keys = np.array(family), caption_keys(captions)
    rank = np.random.default_rng(args.seed).permutation(len(fam))
    expected = len(fam) - len(np.unique(fam))
    out = []
    for eps in args.eps:
        for mode in ("components", "no_chain", "no_chain+caption_veto"):
            if mode == "components":
                rep = _semantic_components(x, rank, eps)
            else:
                veto = keys if mode.endswith("veto") else None
                rep = semantic_groups(x, rank, 1, eps, args.seed, caption_keys=veto)
            gone = np.flatnonzero(rep != np.arange(len(fam)))
            right = int((fam[gone] == fam[rep[gone]]).sum())
            out.append(
                {
                    "eps": eps,
                    "mode": mode,
                    "rejected": len(gone),
                    "precision": round(right / max(1, len(gone)), 4),
                    "recall": round(right / max(1, expected), 4),
                }
            )
    nearest = _nearest_cosine(x, fam)
    return {"rows": len(fam), "expected": int(expected), "model": args.clip, "scores": out, "cosine": nearest}


def _semantic_components(x: np.ndarray, rank: np.ndarray, eps: float) -> np.ndarray:
    """The policy before: connected components of cos > 1 - eps, lowest rank kept (one cluster)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.nonzero(np.triu(u @ u.T > 1 - eps, 1))
    return representatives(components(len(x), np.stack([i, j], 1)), rank)


def _nearest_cosine(x: np.ndarray, fam: np.ndarray) -> dict:
    """Quantiles of the cosine of each copy to its original and of each row's nearest other-family row."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = u @ u.T
    same = fam[:, None] == fam[None, :]
    np.fill_diagonal(same, False)
    copies = sim[same]
    other = np.where(same | np.eye(len(x), dtype=bool), -2, sim).max(axis=1)
    return {"copy": _quantiles(1 - copies), "distinct_nearest": _quantiles(1 - other)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1200, help="originals copied (one perturbation each)")
    parser.add_argument("--tones", type=int, default=300, help="skin-tone variants drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 10, 12, 14])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[4, 6, 8, 10, 12, 15, 20])
    parser.add_argument("--styles", nargs="+", default=["composed", "plain"])
    parser.add_argument("--out", type=Path, default=Path("verify_dedup.json"))
    parser.add_argument("--semantic", action="store_true", help="measure dup_semantic instead (composed pool)")
    parser.add_argument("--clip", default="lit-offline", help="CLIP model for --semantic")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--dump", help="also save each style's pool (hashes, signatures, families) as DUMP-STYLE.npz")
    args = parser.parse_args()
    cache = default_cache()
    if args.semantic:
        result = semantic(args, cache)
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    result = {style: measure(style, args, cache) for style in args.styles}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({s: r["kinds"] for s, r in result.items()}, indent=1)[:6000])


if __name__ == "__main__":
    main()
