"""Benchmark: curate's acquire step against plain img2dataset on the same URL list.

Claim checked: "curate's acquisition costs at most 1.10x plain img2dataset's wall time, Ray
start-up included".

What is measured: ``--n`` URLs (default 20,000) of small distinct JPEGs (64-128 px; a few
hundred distinct images, each served under many distinct paths) from a real HTTP server
(``curate.demo.server.LoopbackServer``) bound to 127.0.0.1 only, running in its own process so
that the benchmark driver never competes with it for the GIL. Both tools run as fresh
subprocesses of the same Python, so both wall times include interpreter start-up and imports:

- img2dataset: ``python -c "img2dataset.download(...)"`` with the settings curate uses
  (webdataset output, ``resize_mode="no"``, ``disable_all_reencoding=True``, timeout 10 s,
  no retries, multiprocessing distributor with ``--processes`` processes);
- curate: ``curate run pipelines/demo.yaml --until acquire`` with the same shard size, threads
  and timeout (embedded Ray, so Ray start-up and shutdown are included).

With ``--repeats`` > 1 the runs alternate (A, B, A, B, ...) and the medians are reported.
Success counts come from the ``*_stats.json`` files both tools write.

Run from the repository root::

    .venv/bin/python benchmarks/acquire.py            # 20,000 URLs
    .venv/bin/python benchmarks/acquire.py --n 2000   # quick check
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
N_DISTINCT = 400  # distinct images; each is served under ~n / N_DISTINCT paths
LOOPBACK = "127.0.0.1"

IMG2DATASET_CODE = """
import json, os, sys
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
import img2dataset
img2dataset.download(**json.loads(sys.argv[1]))
"""


@dataclass
class RunResult:
    """One timed run of one tool."""

    tool: str
    seconds: float
    stats: dict = field(default_factory=dict)
    step_seconds: float | None = None  # curate only: the acquire step as its manifest records it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="URLs in the list (default 20000)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/acquire.json"))
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1)
    return p.parse_args(argv)


# --- corpus and server -------------------------------------------------------------------------


def make_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct small JPEGs (sides 64-128 px): a coloured background with a few shapes."""
    rng = random.Random(seed)
    bodies: list[bytes] = []
    seen: set[bytes] = set()
    while len(bodies) < n:
        w, h = rng.randint(64, 128), rng.randint(64, 128)
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 4)):
            x0, y0 = rng.randrange(w - 8), rng.randrange(h - 8)
            box = (x0, y0, rng.randint(x0 + 4, w), rng.randint(y0 + 4, h))
            fill = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(75, 95))
        if buf.getvalue() not in seen:
            seen.add(buf.getvalue())
            bodies.append(buf.getvalue())
    return bodies


def url_path(i: int) -> str:
    """Path of URL number ``i``."""
    return f"/img/{i:06d}.jpg"


def serve(bodies: list[bytes], n_urls: int, conn: Connection) -> None:
    """Child process: serve ``n_urls`` paths on 127.0.0.1, send the base URL, stop when told."""
    from curate.demo.corpus import WebObject
    from curate.demo.server import LoopbackServer

    objects = {url_path(i): WebObject(url_path(i), bodies[i % len(bodies)], "image/jpeg") for i in range(n_urls)}
    with LoopbackServer(objects, host=LOOPBACK) as server:
        conn.send(server.base_url)
        conn.recv()  # any message (or the driver exiting) stops the server


def start_server(bodies: list[bytes], n_urls: int) -> tuple[mp.Process, Connection, str]:
    """Start :func:`serve` in a spawned process; returns it, the control pipe and the base URL."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(bodies, n_urls, child), daemon=True)
    proc.start()
    if not parent.poll(60):
        raise RuntimeError("the loopback server did not start within 60 s")
    base_url = parent.recv()
    if not base_url.startswith(f"http://{LOOPBACK}:"):
        raise RuntimeError(f"server bound to {base_url}, not loopback")
    return proc, parent, base_url


def stop_server(proc: mp.Process, conn: Connection) -> None:
    """Ask the server process to stop and wait for it."""
    with contextlib.suppress(OSError):
        conn.send("stop")
    proc.join(timeout=10)
    if proc.is_alive():
        proc.terminate()
        proc.join()


def write_urls(base_url: str, n_urls: int, path: Path) -> Path:
    """The URL list as Parquet with columns ``url`` and ``caption``."""
    urls = [base_url + url_path(i) for i in range(n_urls)]
    captions = [f"synthetic picture number {i} with a few coloured shapes" for i in range(n_urls)]
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return path


# --- the two runs ------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """Environment for both tools: no proxy for loopback, embedded Ray, no albumentations check."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = ",".join(filter(None, [env.get(key), LOOPBACK, "localhost"]))
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    return env


def timed(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` from the repository root with output to ``log``; its wall time in seconds."""
    with log.open("w") as f:
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=f, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        print(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}", file=sys.stderr)
    return seconds


def run_img2dataset(args: argparse.Namespace, urls: Path, out: Path) -> RunResult:
    """Plain img2dataset in a fresh interpreter, with curate's settings."""
    kwargs = {
        "url_list": str(urls),
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "caption",
        "output_format": "webdataset",
        "output_folder": str(out),
        "processes_count": args.processes,
        "thread_count": args.threads,
        "number_sample_per_shard": args.samples_per_shard,
        "resize_mode": "no",
        "disable_all_reencoding": True,
        "timeout": 10,
        "retries": 0,
        "distributor": "multiprocessing",
        "enable_wandb": False,
    }
    cmd = [sys.executable, "-c", IMG2DATASET_CODE, json.dumps(kwargs)]
    seconds = timed(cmd, out.with_suffix(".log"))
    return RunResult("img2dataset", seconds, shard_stats(out))


def run_curate(args: argparse.Namespace, urls: Path, run_dir: Path) -> RunResult:
    """``curate run pipelines/demo.yaml --until acquire`` as a user runs it (embedded Ray)."""
    cmd = [
        str(Path(sys.executable).with_name("curate")),
        "run",
        "pipelines/demo.yaml",
        "--input",
        str(urls),
        "--output",
        str(run_dir),
        "--until",
        "acquire",
        "--set",
        f"acquire.samples_per_shard={args.samples_per_shard}",
        "--set",
        f"acquire.threads={args.threads}",
        "--set",
        "acquire.timeout=10",
    ]
    seconds = timed(cmd, run_dir.with_suffix(".log"))
    return RunResult("curate", seconds, shard_stats(run_dir / "raw"), acquire_step_seconds(run_dir))


def shard_stats(folder: Path) -> dict:
    """Sum of the per-shard ``*_stats.json`` counts, and the failure messages seen."""
    total = {"shards": 0, "count": 0, "successes": 0, "failed_to_download": 0, "errors": {}}
    for path in sorted(folder.glob("*_stats.json")):
        stats = json.loads(path.read_text())
        total["shards"] += 1
        for key in ("count", "successes", "failed_to_download"):
            total[key] += stats.get(key, 0)
        for status, n in stats.get("status_dict", {}).items():
            if status != "success":
                total["errors"][status] = total["errors"].get(status, 0) + n
    return total


def acquire_step_seconds(run_dir: Path) -> float | None:
    """The acquire step's own duration from curate's manifest (inside the Ray session)."""
    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text())["steps"].get("acquire", {}).get("seconds")


def run_all(args: argparse.Namespace, urls: Path, work: Path) -> dict[str, list[RunResult]]:
    """Alternate img2dataset and curate ``--repeats`` times, each into a fresh folder."""
    runs: dict[str, list[RunResult]] = {"img2dataset": [], "curate": []}
    for r in range(args.repeats):
        for tool, fn in (("img2dataset", run_img2dataset), ("curate", run_curate)):
            result = fn(args, urls, work / f"{tool}-{r}")
            runs[tool].append(result)
            ok = result.stats["successes"]
            print(f"  repeat {r + 1}/{args.repeats} {tool}: {result.seconds:.1f} s, {ok} ok")
    return runs


# --- report ------------------------------------------------------------------------------------


def summarize(args: argparse.Namespace, runs: dict[str, list[RunResult]]) -> dict:
    """The result record (medians over repeats, plus every repeat)."""
    i2d = statistics.median(r.seconds for r in runs["img2dataset"])
    cur = statistics.median(r.seconds for r in runs["curate"])
    steps = [r.step_seconds for r in runs["curate"] if r.step_seconds is not None]
    return {
        "n_urls": args.n,
        "processes": args.processes,
        "threads": args.threads,
        "samples_per_shard": args.samples_per_shard,
        "repeats": args.repeats,
        "img2dataset_s": round(i2d, 2),
        "curate_s": round(cur, 2),
        "ratio": round(cur / i2d, 3),
        "img2dataset_images_per_s": round(args.n / i2d, 1),
        "curate_images_per_s": round(args.n / cur, 1),
        "curate_acquire_step_s": round(statistics.median(steps), 2) if steps else None,
        "img2dataset_successes": [r.stats["successes"] for r in runs["img2dataset"]],
        "curate_successes": [r.stats["successes"] for r in runs["curate"]],
        "runs": {tool: [vars(r) for r in results] for tool, results in runs.items()},
        "timing": "both tools run as fresh subprocesses of the same Python (interpreter start-up "
        "and imports included; curate also includes embedded Ray start-up and shutdown)",
        "server": f"curate.demo.server.LoopbackServer on {LOOPBACK} in its own process",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def print_table(result: dict, runs: dict[str, list[RunResult]]) -> None:
    """Tool, median wall seconds, images/s and successes; then the ratio and any failures."""
    print(
        f"\n{result['n_urls']} URLs, {result['processes']} processes x {result['threads']} "
        f"threads, {result['samples_per_shard']} URLs/shard, median of {result['repeats']}; "
        "both as subprocesses (interpreter start-up included)"
    )
    print(f"{'tool':<14}{'wall s':>9}{'images/s':>11}{'successes':>12}")
    for tool in ("img2dataset", "curate"):
        ok = min(r.stats["successes"] for r in runs[tool])
        print(f"{tool:<14}{result[f'{tool}_s']:>9.2f}{result[f'{tool}_images_per_s']:>11.1f}{ok:>12}")
    print(f"ratio curate / img2dataset: {result['ratio']:.3f} (claim: <= 1.10)")
    if result["curate_acquire_step_s"] is not None:
        print(f"curate acquire step alone (inside Ray): {result['curate_acquire_step_s']:.2f} s")
    for tool, results in runs.items():
        for r in results:
            if r.stats["successes"] != result["n_urls"]:
                print(
                    f"FAILURES {tool}: {r.stats['successes']}/{result['n_urls']} ok, "
                    f"{r.stats['shards']} shards, errors {r.stats['errors']}"
                )


def main(argv: list[str] | None = None) -> dict:
    """Build the corpus, serve it, time both tools, print and write the result."""
    args = parse_args(argv)
    bodies = make_images(min(N_DISTINCT, args.n))
    with tempfile.TemporaryDirectory(prefix="curate-bench-acquire-") as tmp:
        work = Path(tmp)
        proc, conn, base_url = start_server(bodies, args.n)
        try:
            urls = write_urls(base_url, args.n, work / "urls.parquet")
            print(f"serving {args.n} URLs ({len(bodies)} distinct JPEGs) on {base_url}")
            runs = run_all(args, urls, work)
        finally:
            stop_server(proc, conn)
    result = summarize(args, runs)
    print_table(result, runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
