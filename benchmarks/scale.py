"""Benchmark: does the driver hold the pool? Driver peak RSS and step seconds at 1e5 and 1e6 rows.

Claim checked (issue 17): ``curate run`` on a pool of N rows keeps the driver's memory flat — peak RSS at
1e6 rows within 1.25x of its value at 1e5 (growth under 100 bytes a row) — and each step's time grows
at most 1.3x faster than linearly from 1e5 to 1e6.

The pool is written directly in img2dataset's output layout (``NNNNN.tar`` of ``KEY.jpg`` members,
``NNNNN.parquet``, ``NNNNN_stats.json``), so nothing is downloaded: tiny distinct JPEGs (16x16, every
one different) with generated captions, 10,000 samples a shard. It is then curated with
``curate run --input POOL`` (already-downloaded input, read in place) and the recipe below: image,
hash, caption and language signals; size, caption and exact-duplicate policies; WebDataset +
Parquet emit with a global shuffle.

What is measured: the ``curate`` process (the driver) alone — not Ray's raylet, GCS or workers,
which are other processes — sampled every 0.2 s from ``/proc/PID/status`` (VmRSS per step window,
VmHWM for the whole run); step seconds from the run's ``manifest.json``.

Run from the repository root (1e6 rows take ~30 min and ~2 GB of disk on 2 cores)::

    .venv/bin/python benchmarks/scale.py                    # 1e5 and 1e6 rows
    .venv/bin/python benchmarks/scale.py --sizes 20000      # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.demo.synthetic import tiny_image

RECIPE = """\
name: scale-benchmark
description: Signals and policies that read every row, on a pool of tiny images.
annotate:
  - stage: image
  - stage: hashes
  - stage: caption
  - stage: language
decide:
  - policy: image_size
    min_side: 8
  - policy: caption_length
    min_chars: 1
  - policy: exact_dedup
emit:
  samples_per_shard: 10000
  shuffle_seed: 0
"""

WORDS = "red blue green small large old dog cat house car tree beach city lake bowl flower garden bridge".split()
PER_SHARD = 10_000


def write_pool(folder: Path, n: int, per_shard: int = PER_SHARD) -> None:
    """An img2dataset output folder of ``n`` tiny distinct JPEGs with captions (``per_shard`` a shard)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = -(-n // per_shard)
    for shard in range(n_shards):
        start, stop = shard * per_shard, min(n, (shard + 1) * per_shard)
        _write_shard(folder, shard, np.arange(start, stop))


def _write_shard(folder: Path, shard: int, ids: np.ndarray) -> None:
    name = f"{shard:05d}"
    keys = [f"{name}{i % PER_SHARD:04d}" for i in ids]
    rng = np.random.default_rng(shard)
    with tarfile.open(folder / f"{name}.tar", "w") as tar:
        for key, i in zip(keys, ids, strict=True):
            data = tiny_image(int(i), size=(16, 16))
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    words = np.array(WORDS)
    captions = [" ".join(words[rng.integers(0, len(WORDS), 5)]) + f" {i}" for i in ids]
    table = pa.table(
        {
            "key": keys,
            "url": [f"https://example.com/{i}.jpg" for i in ids],
            "caption": captions,
            "status": ["success"] * len(ids),
            "error_message": pa.nulls(len(ids), pa.string()),
            "width": pa.array([16] * len(ids), pa.int32()),
            "height": pa.array([16] * len(ids), pa.int32()),
            "original_width": pa.array([16] * len(ids), pa.int32()),
            "original_height": pa.array([16] * len(ids), pa.int32()),
        }
    )
    pq.write_table(table, folder / f"{name}.parquet")
    stats = {"count": len(ids), "successes": len(ids), "failed_to_download": 0, "failed_to_resize": 0}
    (folder / f"{name}_stats.json").write_text(json.dumps(stats))


class RssSampler:
    """Samples one process's VmRSS (and its VmHWM) every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if "VmRSS" not in fields:  # a zombie: the process has exited
                return
            rss = int(fields["VmRSS"].split()[0]) * 1024
            self.hwm = max(self.hwm, int(fields["VmHWM"].split()[0]) * 1024)
            self.samples.append((time.time(), rss))
            self._stop.wait(self.interval)

    def peak(self, start: float, stop: float) -> int:
        """Largest RSS sampled in ``[start, stop]`` (0 when none)."""
        return max((rss for t, rss in self.samples if start - 0.5 <= t <= stop + 0.5), default=0)


def run_curate(pool: Path, run_dir: Path, recipe: Path) -> dict:
    """``curate run`` on ``pool``; the driver's RSS per step (manifest windows) and overall."""
    cmd = [sys.executable, "-m", "curate", "run", str(recipe), "--input", str(pool)]
    cmd += ["--output", str(run_dir)]
    env = {**os.environ, "CURATE_RAY_TMPDIR": os.environ.get("CURATE_RAY_TMPDIR", "/tmp/ray")}
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with RssSampler(proc.pid) as sampler:
        _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"curate run failed ({proc.returncode}):\n{err[-3000:]}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    steps = {}
    for name, record in manifest["steps"].items():
        begin, end = (_epoch(record[k]) for k in ("started", "finished"))
        steps[name] = {"seconds": record["seconds"], "driver_peak_rss": sampler.peak(begin, end)}
    return {
        "wall_s": round(time.time() - start, 1),
        "driver_peak_rss": sampler.hwm,
        "steps": steps,
        "kept": manifest.get("funnel", {}).get("steps", {}).get("kept"),
    }


def _epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", default=None, help="Folder for pools and runs (default: a temp folder).")
    parser.add_argument("--keep", action="store_true", help="Keep pools and runs.")
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="curate-scale-"))
    recipe = work / "scale.yaml"
    work.mkdir(parents=True, exist_ok=True)
    recipe.write_text(RECIPE)
    results = {}
    for n in args.sizes:
        pool, run_dir = work / f"pool-{n}", work / f"run-{n}"
        t0 = time.perf_counter()
        if not (pool / f"{(n - 1) // PER_SHARD:05d}_stats.json").exists():
            write_pool(pool, n)
        made = time.perf_counter() - t0
        shutil.rmtree(run_dir, ignore_errors=True)
        results[n] = {"rows": n, "pool_write_s": round(made, 1), **run_curate(pool, run_dir, recipe)}
        print(f"{n:>10,} rows: driver peak {results[n]['driver_peak_rss'] / 2**20:.0f} MiB, {results[n]['wall_s']} s")
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    report(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sizes": results, "cpus": os.cpu_count()}, indent=2))
    print(f"wrote {out}")
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict) -> None:
    """Print driver RSS and seconds per step for each size, and the ratios between the two largest sizes."""
    sizes = sorted(results)
    steps = [s for s in ("acquire", "annotate", "decide", "emit", "report") if s in results[sizes[0]]["steps"]]
    header = f"{'rows':>10} {'driver peak MiB':>16} " + " ".join(f"{s + ' s':>12}" for s in steps)
    print(header)
    for n in sizes:
        r = results[n]
        row = " ".join(f"{r['steps'].get(s, {}).get('seconds', float('nan')):>12.1f}" for s in steps)
        print(f"{n:>10,} {r['driver_peak_rss'] / 2**20:>16.0f} {row}")
    if len(sizes) >= 2:
        small, large = results[sizes[-2]], results[sizes[-1]]
        scale = sizes[-1] / sizes[-2]
        growth = (large["driver_peak_rss"] - small["driver_peak_rss"]) / (sizes[-1] - sizes[-2])
        print(
            f"driver peak RSS ratio {large['driver_peak_rss'] / small['driver_peak_rss']:.2f}x "
            f"(goal <= 1.25x), growth {growth:.0f} bytes/row (goal < 100)"
        )
        for s in steps:
            a, b = small["steps"][s]["seconds"], large["steps"][s]["seconds"]
            print(f"  {s:<9} time ratio / linear: {b / max(a, 1e-9) / scale:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
