"""Benchmark: staging a URL list into ``RUN/input/{shard}.parquet`` on the driver and in Ray tasks.

Claim checked: "with a list over ``input.driver_max_bytes``, the driver holds no rows while staging: its peak
memory does not grow with the list" (issue 17), against the in-driver path for small lists.

What is measured: lists of ``--sizes`` rows (URL ~40 characters, caption ~40), written as ``--files`` Parquet
files, staged with ``acquire.samples_per_shard`` 10,000 by :func:`curate.acquire.staging.stage_urls`. Each size and
path runs in a fresh subprocess (Ray embedded, ``--cpus`` CPUs); reported are the seconds and the driver's
peak RSS growth while staging (``ru_maxrss`` after minus RSS before; the workers are other processes).

Run from the repository root::

    .venv/bin/python benchmarks/staging.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

STAGE = """
import json, resource, sys, time
from curate import runtime
from curate.acquire import staging
from curate.recipe import load_recipe
folder, run_dir, mode, cpus = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = load_recipe("demo").input.model_copy(update={"driver_max_bytes": 0 if mode == "tasks" else 1 << 40})
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024
with runtime.session(num_cpus=cpus):
    before = rss()
    start = time.perf_counter()
    layout, staged = staging.stage_urls(folder, cfg, 10_000, run_dir, {}, runtime.run_tasks)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": staged.rows, "shards": layout.n_shards, "s": took, "driver_mib": (peak - before) / 2**20}))
"""


def write_lists(folder: Path, n: int, files: int) -> None:
    folder.mkdir(parents=True)
    bounds = np.linspace(0, n, files + 1, dtype=np.int64)
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        ids = pa.array(np.arange(lo, hi)).cast(pa.string())
        url = pc.binary_join_element_wise("http://img.example.com/photos/", ids, ".jpg", "")
        caption = pc.binary_join_element_wise("a photo number ", ids, " of a cat on a mat", "")
        pq.write_table(pa.table({"url": url, "caption": caption}), folder / f"part-{i:03d}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    print(f"{'rows':>10} {'path':>7} {'shards':>7} {'seconds':>8} {'driver MiB':>11} {'B/row':>6}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            write_lists(Path(tmp) / "lists", n, args.files)
            for mode in ("driver", "tasks"):
                run_dir = Path(tmp) / f"run-{mode}"
                cmd = [sys.executable, "-c", STAGE, f"{tmp}/lists", str(run_dir), mode, str(args.cpus)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
                r = json.loads(out[-1])
                per_row = r["driver_mib"] * 2**20 / n
                print(f"{n:>10} {mode:>7} {r['shards']:>7} {r['s']:>8.1f} {r['driver_mib']:>11.1f} {per_row:>6.0f}")


if __name__ == "__main__":
    main()
