"""Benchmark: exact near-duplicate search over 64-bit perceptual hashes (``curate.decide.neardup``).

Claims checked:
- ``near_pairs`` finds every pair within k = 8 bits among 1e6 hashes in <= 20 s on 2 cores, and
  grows close to linearly (seconds per million rows at 1e5, 1e6 and 1e7);
- recall is 1.0 on planted near pairs (1 % of the rows get a partner 1..k bits away) and every
  returned pair is within k;
- the speed-up over a naive pairwise pass at 1e5. The naive pass is SAMPLED: 2,000 random rows
  are compared against all rows (vectorised popcount, same thread count) and the time is
  extrapolated to all n(n-1)/2 pairs.
Hashes are uniform random 64-bit values. Each size runs in its own subprocess, so the peak
resident memory (``ru_maxrss``) of one size does not carry into the next; the data generation is
not timed but is inside the peak.

``--calibrate`` also measures the table in ``curate/decide/neardup.py`` that fixes the default k:
pHash (``imagehash.phash``) distances between generated images and their transformed copies
(JPEG q30, half/double size, 2 %/5 % crops, a text overlay, +10 % brightness), and between
distinct images. ``semantic_section`` times ``curate.decide.semantic.semantic_groups`` when that
module can be imported.

Run from the repository root::

    .venv/bin/python benchmarks/dedup.py                   # 1e5, 1e6, 1e7 at k = 8 (~3 min)
    .venv/bin/python benchmarks/dedup.py --sizes 1e5 1e6 --k 6 --semantic-sizes
    .venv/bin/python benchmarks/dedup.py --calibrate       # + the pHash table (~1 min, imagehash)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from curate.decide.neardup import DEFAULT_K, band_layout, components, near_pairs, representatives

PLANTED_FRACTION = 0.01
NAIVE_SAMPLE_ROWS = 2000


def peak_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def planted_hashes(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uniform random hashes; 1 % of the rows are copies of another row with 1..k bits flipped.

    Returns the hashes and the planted pairs (i < j), shape (m, 2).
    """
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    m = int(n * PLANTED_FRACTION)
    src, dst = rng.permutation(n)[: 2 * m].reshape(2, m)
    distance = rng.integers(1, k + 1, m) if k else np.zeros(m, np.int64)
    bits = np.argsort(rng.random((m, 64)), axis=1)  # a random order of the 64 bits per row
    chosen = np.where(np.arange(64) < distance[:, None], np.uint64(1) << bits.astype(np.uint64), np.uint64(0))
    hashes[dst] = hashes[src] ^ np.bitwise_or.reduce(chosen, axis=1)
    return hashes, np.sort(np.stack([src, dst], axis=1), axis=1)


def naive_seconds(hashes: np.ndarray, k: int, sample: int, seed: int) -> float:
    """Seconds a full pairwise pass would take, extrapolated from ``sample`` rows against all rows.

    Vectorised popcount over blocks of 64 rows x all rows, on as many threads as near_pairs uses.
    """
    rows = np.random.default_rng(seed).choice(len(hashes), min(sample, len(hashes)), replace=False)

    def block(chunk: np.ndarray) -> int:
        return len(np.flatnonzero(np.bitwise_count(hashes[chunk, None] ^ hashes[None, :]) <= k))

    start = time.perf_counter()
    with ThreadPoolExecutor(cpus()) as pool:
        list(pool.map(block, np.array_split(rows, max(1, len(rows) // 64))))
    per_row = (time.perf_counter() - start) / len(rows)
    return per_row * len(hashes) / 2  # n rows against all rows counts every pair twice


def measure_size(n: int, k: int, seed: int, naive: bool) -> dict:
    """One size, in this (child) process: time near_pairs and the grouping, check recall."""
    hashes, planted = planted_hashes(n, k, seed)
    before = peak_mib()
    start = time.perf_counter()
    pairs = near_pairs(hashes, k)
    search_s = time.perf_counter() - start
    start = time.perf_counter()
    keep = representatives(components(n, pairs), np.arange(n))
    group_s = time.perf_counter() - start
    after = peak_mib()
    assert (np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= k).all(), "a returned pair is too far"
    found = np.isin(planted[:, 0] * n + planted[:, 1], pairs[:, 0] * n + pairs[:, 1])
    row = {
        "n": n,
        "k": k,
        "layout": [[b.bits, b.radius] for b in band_layout(k, len(np.unique(hashes)))],
        "search_s": round(search_s, 3),
        "s_per_million": round(search_s / (n / 1e6), 3),
        "group_s": round(group_s, 3),
        "peak_rss_mib": round(after),
        "rss_before_search_mib": round(before),
        "pairs_found": len(pairs),
        "planted": len(planted),
        "recall": float(found.mean()) if len(found) else 1.0,
        "rows_rejected": int((keep != np.arange(n)).sum()),
    }
    if naive:
        row["naive_s_extrapolated"] = round(naive_seconds(hashes, k, NAIVE_SAMPLE_ROWS, seed), 2)
        row["speedup_vs_naive"] = round(row["naive_s_extrapolated"] / search_s, 1)
    return row


def in_subprocess(*args: str) -> dict:
    """Run this script with ``args`` in a fresh interpreter and return the JSON it prints last."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def search_section(args: argparse.Namespace) -> dict:
    """near_pairs at each size, one subprocess per size; prints the table."""
    cores = cpus()
    rows = []
    for n in args.sizes:
        naive = n <= 100_000
        rows.append(
            in_subprocess("--child", str(n), "--k", str(args.k), "--seed", str(args.seed), *["--naive"] * naive)
        )
    print(f"\nnear_pairs, k = {args.k}, uniform random hashes, {PLANTED_FRACTION:.0%} planted pairs, {cores} cores")
    print(
        f"{'n':>10} {'layout (bits,radius)':>24} {'seconds':>8} {'s/million':>9} {'group s':>8} "
        f"{'peak MiB':>9} {'found':>8} {'planted':>8} {'recall':>6} {'naive s':>9} {'speed-up':>8}"
    )
    for r in rows:
        layout = " ".join(f"{b},{t}" for b, t in r["layout"])
        naive = f"{r['naive_s_extrapolated']:9.1f} {r['speedup_vs_naive']:7.0f}x" if "speedup_vs_naive" in r else ""
        print(
            f"{r['n']:>10,} {layout:>24} {r['search_s']:8.2f} {r['s_per_million']:9.2f} {r['group_s']:8.2f} "
            f"{r['peak_rss_mib']:9,} {r['pairs_found']:8,} {r['planted']:8,} {r['recall']:6.3f} {naive}"
        )
    print(f"naive s: all pairs, extrapolated from {NAIVE_SAMPLE_ROWS:,} sampled rows against all rows")
    return {"k": args.k, "cores": cores, "planted_fraction": PLANTED_FRACTION, "rows": rows}


# ---- k calibration: pHash distances of transformed copies (the table in neardup.py) -------------

COPY_KINDS = (
    "jpeg_q30",
    "resize_half",
    "resize_double",
    "crop_2pct",
    "crop_5pct",
    "text_overlay",
    "brightness_+10pct",
)


def scene(rng: np.random.Generator):
    """A natural-ish image: 1/f colour noise (the spectrum of photographs), a vertical gradient and
    0-5 flat shapes, 256-640 px per side."""
    from PIL import Image, ImageDraw

    w, h = (int(v) for v in rng.integers(256, 641, 2))
    f = np.sqrt(np.fft.rfftfreq(w)[None, :] ** 2 + np.fft.fftfreq(h)[:, None] ** 2)
    f[0, 0] = 1.0
    alpha = rng.uniform(1.6, 2.4)
    channels = []
    for _ in range(3):
        spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**alpha
        spectrum[0, 0] = 0
        c = np.fft.irfft2(spectrum, s=(h, w))
        channels.append((c - c.mean()) / (c.std() + 1e-9))
    mix = rng.normal(size=(3, 3)) * 0.3 + np.eye(3)
    pixels = np.tensordot(mix, np.stack(channels), 1).transpose(1, 2, 0) * rng.uniform(20, 60)
    pixels += rng.uniform(60, 190, 3) + np.linspace(-1, 1, h)[:, None, None] * rng.uniform(-60, 60, 3)
    im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 6))):
        x, y, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.4) * min(w, h)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse([x, y, x + s, y + s * rng.uniform(0.5, 2)], fill=fill)
        elif kind == 1:
            draw.rectangle([x, y, x + s, y + s * rng.uniform(0.5, 2)], fill=fill)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 5))
            draw.polygon([(x + s * np.cos(a), y + s * np.sin(a)) for a in angles], fill=fill)
    return jpeg(im, 90)


def jpeg(im, quality: int):
    from PIL import Image

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def copy_of(im, kind: str):
    """The transformed copy ``kind`` of ``im``."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFont

    w, h = im.size
    if kind == "jpeg_q30":
        return jpeg(im, 30)
    if kind == "resize_half":
        return im.resize((w // 2, h // 2), Image.BICUBIC)
    if kind == "resize_double":
        return im.resize((w * 2, h * 2), Image.BICUBIC)
    if kind.startswith("crop_"):
        frac = int(kind[5]) / 100
        return im.crop((round(w * frac), round(h * frac), w - round(w * frac), h - round(h * frac)))
    if kind == "text_overlay":
        out = im.copy()
        font = ImageFont.load_default(size=max(10, h // 20))
        ImageDraw.Draw(out).text((w * 0.05, h * 0.88), "© example.com", fill=(255, 255, 255), font=font)
        return out
    if kind == "brightness_+10pct":
        return ImageEnhance.Brightness(im).enhance(1.1)
    raise ValueError(kind)


def calibration_section(args: argparse.Namespace) -> dict:
    """pHash distances original -> copy per copy kind, and between distinct images."""
    import imagehash

    def phash(im) -> np.uint64:
        return np.uint64(int(str(imagehash.phash(im)), 16))

    rng = np.random.default_rng(args.seed)
    originals = [scene(rng) for _ in range(args.calibrate_images)]
    hashes = np.array([phash(im) for im in originals], dtype=np.uint64)
    with_copies = originals[: args.calibrate_copies]
    thresholds = (4, 6, 8, 10, 12)
    result = {"images": len(originals), "copied": len(with_copies), "copies": {}}
    print(f"\npHash distance to the original, {len(with_copies)} images per copy kind")
    print(
        f"{'copy kind':20} {'median':>6} {'p90':>4} {'p99':>4} {'max':>4}  " + " ".join(f"<={t:<4}" for t in thresholds)
    )
    for kind in COPY_KINDS:
        d = np.bitwise_count(hashes[: len(with_copies)] ^ np.array([phash(copy_of(im, kind)) for im in with_copies]))
        q = {
            name: int(np.quantile(d, p, method="higher")) for name, p in (("median", 0.5), ("p90", 0.9), ("p99", 0.99))
        }
        caught = {t: float((d <= t).mean()) for t in thresholds}
        result["copies"][kind] = {**q, "max": int(d.max()), "caught": caught}
        print(
            f"{kind:20} {q['median']:6} {q['p90']:4} {q['p99']:4} {int(d.max()):4}  "
            + " ".join(f"{caught[t]:6.1%}" for t in thresholds)
        )
    i, j = np.triu_indices(len(hashes), 1)
    d = np.bitwise_count(hashes[i] ^ hashes[j])
    distinct = {
        "pairs": len(d),
        "min": int(d.min()),
        "q0.01%": int(np.quantile(d, 1e-4)),
        "q0.1%": int(np.quantile(d, 1e-3)),
        "q1%": int(np.quantile(d, 1e-2)),
        "median": int(np.median(d)),
        "within": {t: int((d <= t).sum()) for t in thresholds},
    }
    result["distinct"] = distinct
    result["popcount_32_fraction"] = float((np.bitwise_count(hashes) == 32).mean())
    print(
        f"distinct images: {distinct['pairs']:,} pairs, min {distinct['min']}, 0.01 % {distinct['q0.01%']}, "
        f"0.1 % {distinct['q0.1%']}, 1 % {distinct['q1%']}, median {distinct['median']}; pairs within "
        + ", ".join(f"{t}: {c}" for t, c in distinct["within"].items())
    )
    return result


# ---- PLACEHOLDER: semantic dedup (curate/decide/semantic.py is written separately) --------------


def semantic_section(args: argparse.Namespace) -> dict | None:
    """PLACEHOLDER section: time ``curate.decide.semantic.semantic_groups`` on random 512-d float16
    embeddings (1 % planted near copies) when that module imports; otherwise skip with a message
    and return None."""
    try:
        import curate.decide.semantic  # noqa: F401
    except ImportError as err:
        print(f"\nsemantic section skipped: curate.decide.semantic is not importable ({err})")
        return None
    if not args.semantic_sizes:
        return None
    rows = [in_subprocess("--semantic-child", str(n), "--seed", str(args.seed)) for n in args.semantic_sizes]
    print("\nsemantic_groups, random 512-d float16 embeddings, 1 % planted copies (cos ~ 0.999), eps 0.05")
    print(f"{'n':>10} {'clusters':>8} {'seconds':>8} {'s/million':>9} {'peak MiB':>9} {'recall':>6}")
    for r in rows:
        print(
            f"{r['n']:>10,} {r['n_clusters']:8} {r['seconds']:8.2f} {r['s_per_million']:9.2f} "
            f"{r['peak_rss_mib']:9,} {r['recall']:6.3f}"
        )
    return {"dim": 512, "eps": 0.05, "rows": rows}


def measure_semantic(n: int, seed: int, dim: int = 512, eps: float = 0.05) -> dict:
    """One size of semantic_groups, in this (child) process."""
    from curate.decide.semantic import semantic_groups

    rng = np.random.default_rng(seed)
    emb = np.empty((n, dim), np.float16)
    for s in range(0, n, 65_536):
        emb[s : s + 65_536] = rng.standard_normal((min(65_536, n - s), dim), dtype=np.float32)
    m = int(n * PLANTED_FRACTION)
    src, dst = rng.permutation(n)[: 2 * m].reshape(2, m)
    noise = rng.standard_normal((m, dim), dtype=np.float32) * 0.04  # cosine to the source ~ 0.999
    emb[dst] = (emb[src].astype(np.float32) + noise).astype(np.float16)
    n_clusters = max(1, int(n**0.5))
    before = peak_mib()
    start = time.perf_counter()
    rep = semantic_groups(emb, np.arange(n), n_clusters, eps, seed)
    seconds = time.perf_counter() - start
    return {
        "n": n,
        "n_clusters": n_clusters,
        "seconds": round(seconds, 2),
        "s_per_million": round(seconds / (n / 1e6), 2),
        "peak_rss_mib": round(peak_mib()),
        "rss_before_mib": round(before),
        "recall": float((rep[src] == rep[dst]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=float, nargs="*", default=[1e5, 1e6, 1e7], help="rows per run")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="Hamming radius")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", action="store_true", help="also measure the pHash table (imagehash)")
    parser.add_argument("--calibrate-images", type=int, default=1000, help="distinct images for the calibration")
    parser.add_argument("--calibrate-copies", type=int, default=200, help="of which get every copy kind")
    parser.add_argument("--semantic-sizes", type=float, nargs="*", default=[1e5, 1e6], help="none: skip")
    parser.add_argument("--out", default="benchmarks/results/dedup.json")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--semantic-child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_size(int(args.child), args.k, args.seed, args.naive)))
        return
    if args.semantic_child:
        print(json.dumps(measure_semantic(int(args.semantic_child), args.seed)))
        return
    args.sizes = [int(n) for n in args.sizes]
    args.semantic_sizes = [int(n) for n in args.semantic_sizes]
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}  # sections not rerun are kept
    if args.sizes:
        result["search"] = search_section(args)
    if args.calibrate:
        result["calibration"] = calibration_section(args)
    semantic = semantic_section(args)
    if semantic is not None:
        result["semantic"] = semantic
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
