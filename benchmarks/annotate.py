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

``--end-to-end`` (issue 22) also runs the same four stages through ``curate run --until annotate`` on a
pre-built raw pool: an img2dataset output folder (``NNNNN.tar`` of ``KEY.jpg``, ``NNNNN.parquet``,
``NNNNN_stats.json``, 10,000 rows a shard) of the same generated JPEGs (``--unique`` distinct ones, cycled:
sha256 and the signals do the same work on a repeat), curated in place, so nothing is downloaded. The pool
is built once under ``--work`` and reused. It reports the annotate step's rows/s (from the run's
manifest: Ray's start-up and staging are outside it) beside the in-process chained rate per core times
the cores Ray used, and their ratio (goal >= 0.8). The ratio is what to compare on a loaded machine.

Run from the repository root::

    .venv/bin/python benchmarks/annotate.py            # 5,000 images
    .venv/bin/python benchmarks/annotate.py --n 20000
    .venv/bin/python benchmarks/annotate.py --end-to-end --n 100000 --work /tmp/annotate-bench
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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


PER_SHARD = 10_000
RECIPE = """\
name: annotate-benchmark
description: The four CPU signal stages of benchmarks/annotate.py, through curate run.
annotate:
  - stage: image
  - stage: hashes
  - stage: caption
  - stage: language
decide:
  - policy: image_size
    min_side: 8
emit:
  samples_per_shard: 10000
"""


def write_pool(folder: Path, n: int, images: list[bytes], captions: list[str]) -> None:
    """An img2dataset output folder of ``n`` rows, ``PER_SHARD`` a shard, cycling through ``images``."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(-(-n // PER_SHARD)):
        ids = range(shard * PER_SHARD, min(n, (shard + 1) * PER_SHARD))
        name = f"{shard:05d}"
        keys = [f"{name}{i % PER_SHARD:04d}" for i in ids]
        with tarfile.open(folder / f"{name}.tar", "w") as tar:
            for key, i in zip(keys, ids, strict=True):
                data = images[i % len(images)]
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        rows = len(keys)
        table = pa.table(
            {
                "key": keys,
                "url": [f"https://example.com/{i}.jpg" for i in ids],
                "caption": [captions[i % len(captions)] for i in ids],
                "status": ["success"] * rows,
                "error_message": pa.nulls(rows, pa.string()),
                "original_width": pa.nulls(rows, pa.int32()),
                "original_height": pa.nulls(rows, pa.int32()),
            }
        )
        pq.write_table(table, folder / f"{name}.parquet")
        stats = {"count": rows, "successes": rows, "failed_to_download": 0, "failed_to_resize": 0}
        (folder / f"{name}_stats.json").write_text(json.dumps(stats))


def end_to_end(n: int, work: Path, images: list[bytes], captions: list[str]) -> dict:
    """Rows/s of the annotate step of ``curate run --until annotate`` on a pool of ``n`` rows (built once)."""
    pool, run_dir, recipe = work / f"pool-{n}-{len(images)}", work / f"run-{n}", work / "annotate.yaml"
    if not (pool / f"{(n - 1) // PER_SHARD:05d}_stats.json").exists():
        shutil.rmtree(pool, ignore_errors=True)
        write_pool(pool, n, images, captions)
    recipe.write_text(RECIPE)
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "curate", "--quiet", "run", str(recipe), "--input", str(pool)]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--output", str(run_dir), "--until", "annotate"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"curate run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    record = json.loads((run_dir / "manifest.json").read_text())["steps"]["annotate"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "rows": n,
        "annotate_s": record["seconds"],
        "run_wall_s": round(wall, 1),
        "rows_per_s": n / record["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=5000, help="images (and captions)")
    parser.add_argument("--out", default="benchmarks/results/annotate.json")
    parser.add_argument("--end-to-end", action="store_true", help="also time `curate run` on a pool of --n rows")
    parser.add_argument("--unique", type=int, default=5000, help="--end-to-end: distinct images (timed in-process)")
    parser.add_argument("--work", default="/tmp/curate-annotate-bench", help="--end-to-end: pool and run folder")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    size = min(args.n, args.unique) if args.end_to_end else args.n
    images, captions = make_images(size), make_captions(size)
    tables = batches(images, captions)
    runs = {
        "image": [ImageSignals()],
        "hashes": [Hashes()],
        "caption": [CaptionSignals()],
        "language": [LanguageID()],
        "all": [ImageSignals(), Hashes(), CaptionSignals(), LanguageID()],
    }
    rows = {name: size / timed(stages, tables) for name, stages in runs.items()}
    mean_kb = sum(map(len, images)) / len(images) / 1024
    print(f"{size} JPEGs, ~256 px long side, mean {mean_kb:.1f} KB; one process, one core")
    print(f"{'signals':10} {'samples/s':>12}")
    for name, rate in rows.items():
        print(f"{name:10} {rate:12,.0f}")
    result: dict = {
        "n": size,
        "mean_kb": round(mean_kb, 1),
        "per_core_samples_per_s": {k: round(v) for k, v in rows.items()},
    }
    if args.end_to_end:
        result["end_to_end"] = e2e = end_to_end(args.n, Path(args.work), images, captions)
        cores = len(os.sched_getaffinity(0))  # an embedded curate run's Ray uses every core
        e2e["cores"], e2e["ratio"] = cores, round(e2e["rows_per_s"] / (rows["all"] * cores), 3)
        print(
            f"curate run (annotate step, {args.n:,} rows, {cores} cores): {e2e['rows_per_s']:,.0f} rows/s in "
            f"{e2e['annotate_s']} s; in-process chained {rows['all']:,.0f}/s per core x {cores} = "
            f"{rows['all'] * cores:,.0f}/s; ratio {e2e['ratio']:.2f} (goal >= 0.8)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
