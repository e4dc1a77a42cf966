"""Decide at scale: seconds and peak RSS of ``curate.decide.decide`` on a synthetic samples table.

The table is written the way Ray's annotate writes it (part files that each mix raw shards), with
10,000 rows per raw shard, 1 % exact duplicates spread across shards, and the columns the policies
read. Decide runs in a fresh process per size, so its peak RSS is decide's alone (DuckDB runs in process).

    python benchmarks/decide_scale.py --rows 100000 1000000 [--memory 1GB] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_SHARD = 10_000
ROWS_PER_PART = 250_000
RECIPE = {
    "annotate": ["image", "caption", "hashes", {"stage": "clip", "model": "clip-tiny"}],
    "decide": [
        {"policy": "image_size", "min_side": 64},
        {"policy": "caption_length", "min_words": 2},
        {"policy": "url_filter", "domains": ["blocked.example"]},
        "exact_dedup",
        {"policy": "clip_score", "keep_top": 0.5},
    ],
}


def write_samples(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` synthetic samples rows in part files of ``ROWS_PER_PART`` rows, each mixing raw shards."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # a part file holds rows of many raw shards, as Ray's blocks do
    for part, start in enumerate(range(0, n, ROWS_PER_PART)):
        i = order[start : start + ROWS_PER_PART]
        m = len(i)
        digest = np.where(rng.random(m) < 0.01, i % 1000, i)  # 1 % share one of 1,000 hashes
        host = np.where(rng.random(m) < 0.01, "blocked.example", "ok.example")
        table = pa.table(
            {
                "key": pa.array([f"{k:012d}" for k in i]),
                "raw_shard": pa.array([f"{k // ROWS_PER_SHARD:05d}" for k in i]),
                "url": pa.array([f"http://{h}/images/{k}.jpg" for h, k in zip(host, i, strict=True)]),
                "caption": pa.array([f"a photo of thing number {k}" for k in i]),
                "status": pa.array(["success"] * m),
                "decode_error": pa.nulls(m, pa.string()),
                "width": pa.array(rng.integers(32, 1024, m), pa.int32()),
                "height": pa.array(rng.integers(32, 1024, m), pa.int32()),
                "caption_chars": pa.array(rng.integers(0, 80, m), pa.int32()),
                "caption_words": pa.array(rng.integers(0, 12, m), pa.int32()),
                "sha256": pa.array([f"{d:064x}" for d in digest]),
                "clip_score": pa.array(rng.random(m), pa.float32()),
            }
        )
        pq.write_table(table, folder / f"part-{part:05d}.parquet")


def peak_rss_mib() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(samples: Path, out: Path, memory: str) -> dict:
    """Decide over the samples folder in this (fresh) process: seconds, peak RSS, files written."""
    from curate.decide import decide
    from curate.recipe import build_recipe

    policies = build_recipe(RECIPE).decide
    base = peak_rss_mib()
    start = time.perf_counter()
    counts = decide(str(samples / "*.parquet"), policies, out, memory_limit=memory)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    files = len(list(out.iterdir()))
    return {"seconds": round(seconds, 2), "peak_rss_mib": peak, "rss_before_mib": base} | {
        "files": files,
        "rejected": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--memory", default="1GB", help="DuckDB memory_limit for decide")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # child: SAMPLES OUT
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), Path(args.one[1]), args.memory)))
        return
    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="decide-scale-") as tmp:
            write_samples(Path(tmp, "samples"), n)
            child = [sys.executable, __file__, "--one", f"{tmp}/samples", f"{tmp}/decisions", "--memory", args.memory]
            out = subprocess.run(child, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"decide failed at {n:,} rows:\n{out.stderr[-3000:]}")
        results.append({"rows": n, **json.loads(out.stdout.strip().splitlines()[-1])})
    print(f"{'rows':>10} {'seconds':>8} {'s/million':>10} {'peak RSS MiB':>13} {'files':>6}")
    for r in results:
        per = r["seconds"] / r["rows"] * 1e6
        print(f"{r['rows']:>10,} {r['seconds']:>8} {per:>10.1f} {r['peak_rss_mib']:>13} {r['files']:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
