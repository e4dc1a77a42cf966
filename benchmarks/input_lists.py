"""Benchmark: reading a URL list with ``curate.acquire.inputs.read_inputs`` (the recipe's columns only) against reading
every column, as curate did before (``pq.read_table`` / ``pacsv.read_csv`` / ``pajson.read_json`` of the file).

Claim checked: "a run keeps only the recipe's columns of a wide list: the driver's peak memory while reading
grows with the URL and caption columns, not with the list's other columns".

What is measured: a list of ``--n`` rows (default 1,000,000) with ``url``, ``caption`` and ``--extra`` (default
8) unused text columns of 40 characters, written as Parquet, gzipped CSV and zstd JSON Lines. Each read runs in
a fresh subprocess; reported are its wall time and the peak of Arrow's memory pool (``max_memory()``: where
the table's buffers live; the process's resident peak is dominated by curate's imports, over 1 GiB).

Run from the repository root::

    .venv/bin/python benchmarks/input_lists.py --n 200000
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard

READ = """
import json, sys, time
import pyarrow as pa, pyarrow.csv as pacsv, pyarrow.json as pajson, pyarrow.parquet as pq, fsspec
from curate.recipe import load_recipe
from curate.acquire.inputs import read_inputs
mode, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "curate":
    rows = len(read_inputs(path, load_recipe("demo").input, 10_000))
elif mode == "all":
    with fsspec.open(path, "rb", compression="infer") as f:
        reader = pq.read_table if path.endswith(".parquet") else pacsv.read_csv if ".csv" in path else pajson.read_json
        rows = len(reader(f))
else:
    rows = 0
took = time.perf_counter() - start
print(json.dumps({"rows": rows, "s": took, "peak_mib": pa.default_memory_pool().max_memory() / 2**20}))
"""


def write_lists(folder: Path, n: int, extra: int) -> list[Path]:
    columns = {
        "url": [f"http://img.example/{i:09d}.jpg" for i in range(n)],
        "caption": [f"a photo number {i} of a cat on a mat" for i in range(n)],
    }
    columns |= {f"extra{j}": [f"{j:02d}-{i:037d}" for i in range(n)] for j in range(extra)}
    table = pa.table(columns)
    parquet, csv_gz, jsonl_zst = folder / "urls.parquet", folder / "urls.csv.gz", folder / "urls.jsonl.zst"
    pq.write_table(table, parquet)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    csv_gz.write_bytes(gzip.compress(sink.getvalue().to_pybytes(), compresslevel=1))
    lines = "".join(json.dumps(row) + "\n" for row in table.to_pylist())
    jsonl_zst.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    return [parquet, csv_gz, jsonl_zst]


def measure(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", READ, mode, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--extra", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_lists(Path(tmp), args.n, args.extra)
        idle = measure("none", paths[0])["peak_mib"]
        print(f"{args.n:,} rows, url + caption + {args.extra} unused columns; Arrow pool peak MiB (idle {idle:.0f})")
        print(f"{'file':18} {'MiB on disk':>11} {'curate s':>9} {'curate MiB':>10} {'all-cols s':>10} {'all MiB':>8}")
        for path in paths:
            mine, full = measure("curate", path), measure("all", path)
            assert mine["rows"] == full["rows"] == args.n
            print(
                f"{path.name:18} {path.stat().st_size / 2**20:11.1f} {mine['s']:9.2f} {mine['peak_mib']:10.0f}"
                f" {full['s']:10.2f} {full['peak_mib']:8.0f}"
            )


if __name__ == "__main__":
    main()
