"""Benchmark: throughput of the CPU annotate signals, per core.

Claim checked: "the image signals run at >= 300 samples/s per core" on >= 5,000 images of about
256 px, and fastText language ID throughput in captions/s.

What is measured, in one process on one core (no Ray, so the number is per core):
- ``image``: Pillow decode of the full image + size, aspect, EXIF orientation, frames;
- ``hashes``: sha256 of the bytes;
- ``caption``: normalisation (HTML entities, mojibake, whitespace), counts, boilerplate flags;
- ``language``: fastText lid.176 on the raw captions;
- ``all``: the four stages chained, as annotate runs them.
Images are realistic JPEGs (smooth gradients + texture + shapes, quality 90, ~256 px on the long
side, random aspect ratios); captions are generated alt-text-like sentences with some noise.

Run from the repository root::

    .venv/bin/python benchmarks/annotate.py            # 5,000 images
    .venv/bin/python benchmarks/annotate.py --n 20000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from curate.signals.caption import CaptionSignals
from curate.signals.hashes import Hashes
from curate.signals.image import ImageSignals
from curate.signals.language import LanguageID

WORDS = (
    "red blue green old small large wooden vintage modern dog cat house car tree beach city street "
    "mountain lake river bowl table woman man child bicycle flower garden sunset night market bridge "
    "with on in at near under over and of the a"
).split()
NOISE = [
    "IMG_{:04d}.JPG",
    "click here",
    "photo",
    "Un vieux phare sur la côte",
    "Ein Hund im Park",
    "&amp; more",
]


def make_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct JPEGs of about 256 px on the long side."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        long, short = 256, int(rng.integers(128, 257))
        w, h = (long, short) if rng.random() < 0.5 else (short, long)
        grad = np.linspace(0, 1, w)[None, :, None] * rng.integers(0, 255, 3)[None, None, :]
        pixels = np.clip(grad + rng.normal(0, 12, (h, w, 3)) + rng.integers(0, 80), 0, 255).astype(np.uint8)
        im = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            draw.ellipse([x, y, x + 40, y + 40], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_captions(n: int, seed: int = 0) -> list[str]:
    """Alt-text-like captions, one in ten a noisy one."""
    rng = np.random.default_rng(seed)
    caps = []
    for i in range(n):
        if i % 10 == 9:
            caps.append(NOISE[i // 10 % len(NOISE)].format(i))
        else:
            caps.append(" ".join(rng.choice(WORDS, int(rng.integers(4, 16)))).capitalize())
    return caps


def batches(images: list[bytes], captions: list[str], size: int = 256) -> list[pa.Table]:
    n = len(images)
    table = pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "caption": pa.array(captions, pa.string()),
            "original_width": pa.nulls(n, pa.int32()),
            "original_height": pa.nulls(n, pa.int32()),
        }
    )
    return [table.slice(i, size) for i in range(0, n, size)]


def timed(stages, tables: list[pa.Table]) -> float:
    """Seconds to run ``stages`` in sequence over every table (setup excluded)."""
    for stage in stages:
        stage.ensure_setup()
    start = time.perf_counter()
    for table in tables:
        for stage in stages:
            table = stage(table)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=5000, help="images (and captions)")
    parser.add_argument("--out", default="benchmarks/results/annotate.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    images, captions = make_images(args.n), make_captions(args.n)
    tables = batches(images, captions)
    runs = {
        "image": [ImageSignals()],
        "hashes": [Hashes()],
        "caption": [CaptionSignals()],
        "language": [LanguageID()],
        "all": [ImageSignals(), Hashes(), CaptionSignals(), LanguageID()],
    }
    rows = {name: args.n / timed(stages, tables) for name, stages in runs.items()}
    mean_kb = sum(map(len, images)) / len(images) / 1024
    print(f"{args.n} JPEGs, ~256 px long side, mean {mean_kb:.1f} KB; one process, one core")
    print(f"{'signals':10} {'samples/s':>12}")
    for name, rate in rows.items():
        print(f"{name:10} {rate:12,.0f}")
    result = {
        "n": args.n,
        "mean_kb": round(mean_kb, 1),
        "per_core_samples_per_s": {k: round(v) for k, v in rows.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
