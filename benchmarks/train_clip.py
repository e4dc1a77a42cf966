"""Benchmark: training throughput of ``curate train clip`` against ``open_clip_train.main``.

Claim checked: "``curate train clip`` trains at >= 0.95x the samples/s of ``open_clip_train.main``
on the same shards, model and batch size."

Method:
- Shards: ``--n`` (2,000) Pillow-drawn image-caption pairs (a few coloured shapes on a coloured
  background, ~128 px, JPEG q90; captions like "a small red circle and a blue square on a grey
  background"), written deterministically to a temp folder as WebDataset tars of 500 samples
  (``{key}.jpg``, ``{key}.txt``, ``{key}.json``) plus ``sizes.json``: the layout ``curate run`` emits.
- Model: ``--model`` (``clip-tiny``) from :func:`curate.models.clip.load_clip`, saved once as an
  open_clip model folder that ``open_clip_train.main`` loads with ``--model local-dir:DIR``; curate
  builds the same architecture by name (both random init: the weights do not change the speed).
- Both train ``--steps`` (60) optimizer steps of ``--batch-size`` (64) pairs, AdamW (betas 0.9/0.98,
  eps 1e-6, wd 0.1), lr ``--lr`` with ``--warmup`` linear warmup then cosine, ``--precision`` (fp32),
  ``--workers`` (1) DataLoader workers, seed 0, and log every step. curate runs as the CLI
  (``python -m curate train clip --config TMP.yaml``); open_clip as ``open_clip_train.main``
  (``--dataset-type webdataset``, a brace pattern, ``--train-num-samples`` = steps x batch,
  ``--epochs 1``, ``--save-frequency 0``: it still saves once at the end, as curate does), after
  curate's torchvision shim (see tests/test_train_clip.py). Each is a subprocess; the order
  alternates over ``--repeats`` (2).
- Throughput: the per-step samples/s each tool logs (open_clip's "Batch (t): ..., N/s" line,
  curate's ``log.jsonl`` ``samples_per_s``), the first ``--skip`` (10) steps dropped as warm-up;
  the median (and mean) over the rest, then the median over repeats. Wall-clock of each whole
  subprocess (imports, model build, data start, training, final save) is reported beside it.

Run from the repository root (nothing else heavy at the same time: small machines are noisy)::

    .venv/bin/python benchmarks/train_clip.py                  # clip-tiny, batch 64, 60 steps
    .venv/bin/python benchmarks/train_clip.py --repeats 3 --steps 100

On a GPU machine also run with --model ViT-B-32 --batch-size 256 (configs/train/vit-b-32.yaml
settings; add ``--precision bf16 --workers 8`` for that preset's precision and loaders).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

from curate.device import pick_device

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 170),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle")
OPEN_CLIP_MAIN = (
    "import runpy, sys; from curate.models.compat import ensure_torchvision; ensure_torchvision(); "
    "sys.argv = ['open_clip_train.main', *sys.argv[1:]]; "
    "runpy.run_module('open_clip_train.main', run_name='__main__')"
)
OPEN_CLIP_LINE = re.compile(r"\[\s*(\d+)/\d+ .*?Batch \(t\): [0-9.]+, ([0-9.eE+-]+)/s,")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple) -> None:
    """One filled shape in ``box``."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def make_pair(rng: random.Random, size: int = 128) -> tuple[bytes, str]:
    """A JPEG of one or two shapes on a plain background, and a caption describing it."""
    background = rng.choice(list(COLOURS))
    image = Image.new("RGB", (size, size), COLOURS[background])
    draw = ImageDraw.Draw(image)
    parts = []
    for _ in range(rng.randint(1, 2)):
        shape, colour = rng.choice(SHAPES), rng.choice([c for c in COLOURS if c != background])
        side = rng.randint(size // 4, size // 2)
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        draw_shape(draw, shape, (x, y, x + side, y + side), COLOURS[colour])
        parts.append(f"a {'large' if side > size * 3 // 8 else 'small'} {colour} {shape}")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), f"{' and '.join(parts)} on a {background} background"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def make_shards(folder: Path, n: int, per_shard: int, seed: int = 0) -> str:
    """Write ``n`` pairs as ``00000.tar``... + ``sizes.json``; returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, sizes = random.Random(seed), {}
    for shard, start in enumerate(range(0, n, per_shard)):
        name = f"{shard:05d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for i in range(start, min(n, start + per_shard)):
                jpg, caption = make_pair(rng)
                key = f"{i:09d}"
                add_member(tar, f"{key}.jpg", jpg)
                add_member(tar, f"{key}.txt", caption.encode())
                add_member(tar, f"{key}.json", json.dumps({"key": key, "caption": caption}).encode())
        sizes[name] = min(n, start + per_shard) - start
    (folder / "sizes.json").write_text(json.dumps(sizes, indent=2))
    return f"{folder}/{{00000..{len(sizes) - 1:05d}}}.tar"


def save_model(name: str, folder: Path) -> Path:
    """``name`` built by curate's factory, saved as an open_clip ``local-dir`` folder."""
    from curate.models.clip import load_clip, save_model_folder

    return save_model_folder(load_clip(name).model, name, folder)


def curate_config(args: argparse.Namespace) -> dict:
    """The ``curate train clip`` preset for this benchmark."""
    return {
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "lr": args.lr,
        "weight_decay": 0.1,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "warmup_steps": args.warmup,
        "precision": args.precision,
        "data_workers": args.workers,
        "save_every": args.steps + 1,
        "log_every": 1,
        "seed": 0,
        "device": args.device,
    }


def curate_command(args: argparse.Namespace, spec: str, work: Path) -> tuple[list[str], Path]:
    """The CLI call and the log it writes."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "train.yaml"
    config.write_text(yaml.safe_dump(curate_config(args)))
    output = work / "out"
    cmd = [sys.executable, "-m", "curate", "train", "clip", "--config", str(config), "--data", spec]
    return [*cmd, "--output", str(output)], output / "log.jsonl"


def open_clip_command(args: argparse.Namespace, spec: str, model_dir: Path, work: Path) -> tuple[list[str], Path]:
    """The ``open_clip_train.main`` call and the log it writes."""
    precision = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}[args.precision]
    flags = {
        "--model": f"local-dir:{model_dir}",
        "--dataset-type": "webdataset",
        "--train-data": spec,
        "--train-num-samples": str(args.steps * args.batch_size),
        "--batch-size": str(args.batch_size),
        "--epochs": "1",
        "--workers": str(args.workers),
        "--lr": str(args.lr),
        "--warmup": str(args.warmup),
        "--wd": "0.1",
        "--beta1": "0.9",
        "--beta2": "0.98",
        "--eps": "1e-6",
        "--precision": precision,
        "--seed": "0",
        "--log-every-n-steps": "1",
        "--report-to": "",
        "--save-frequency": "0",
        "--logs": str(work),
        "--name": "run",
    }
    cmd = [sys.executable, "-c", OPEN_CLIP_MAIN, *(item for pair in flags.items() for item in pair)]
    return cmd, work / "run" / "out.log"


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has been busy since boot (Linux), else None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``: its wall-clock, output, and the CPU seconds other processes used meanwhile."""
    busy, mine, start = busy_cpu_s(), children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{output[-3000:]}")
    after = busy_cpu_s()
    other = None if busy is None or after is None else after - busy - (children_cpu_s() - mine)
    return {"wall_s": wall, "output": output, "other_cpu_s": other}


def open_clip_rates(log: Path, output: str, batch_size: int) -> dict[int, float]:
    """step -> samples/s from open_clip's per-step log lines."""
    text = log.read_text() if log.is_file() else output
    return {int(m[1]) // batch_size: float(m[2]) for m in OPEN_CLIP_LINE.finditer(text)}


def curate_rates(log: Path) -> dict[int, float]:
    """step -> samples/s from curate's log.jsonl."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return {row["step"]: row["samples_per_s"] for row in rows}


def steady(rates: dict[int, float], skip: int) -> dict:
    """Median and mean samples/s after the first ``skip`` steps."""
    kept = [rate for step, rate in sorted(rates.items()) if step > skip]
    if not kept:
        raise RuntimeError(f"no steps after warm-up ({len(rates)} logged, skip {skip})")
    return {"median": statistics.median(kept), "mean": statistics.fmean(kept), "steps": len(kept)}


def run_tool(tool: str, args: argparse.Namespace, spec: str, model_dir: Path, work: Path) -> dict:
    """One training run of ``tool``; its throughput, wall-clock and loop time."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # open_clip_train takes a GPU whenever it sees one
    if tool == "curate":
        cmd, log = curate_command(args, spec, work)
    else:
        cmd, log = open_clip_command(args, spec, model_dir, work)
    done = run(cmd, env)
    output = done.pop("output")
    rates = curate_rates(log) if tool == "curate" else open_clip_rates(log, output, args.batch_size)
    if len(rates) != args.steps:
        raise RuntimeError(f"{tool}: {len(rates)} steps logged, expected {args.steps}")
    loop = sum(args.batch_size / rate for rate in rates.values())
    return {"tool": tool, **done, "loop_s": loop, **steady(rates, args.skip), "rates": rates}


def describe(run: dict) -> str:
    """One progress line; flags runs that shared the CPUs with other work."""
    line = f"  {run['tool']} #{run['repeat']}: {run['median']:.1f} samples/s, {run['wall_s']:.1f} s"
    other = run["other_cpu_s"]
    if other is not None and other > 0.05 * run["wall_s"] * (os.cpu_count() or 1):
        line += f"  (other processes used {other:.0f} CPU s meanwhile: noisy)"
    return line


def summarise(runs: list[dict]) -> dict:
    """Per tool: medians over repeats; and the curate / open_clip ratio."""
    tools = {}
    for tool in ("curate", "open_clip"):
        mine = [r for r in runs if r["tool"] == tool]
        tools[tool] = {key: statistics.median(r[key] for r in mine) for key in ("median", "mean", "wall_s", "loop_s")}
    ratio = tools["curate"]["median"] / tools["open_clip"]["median"]
    return {"tools": tools, "ratio": ratio}


def print_table(summary: dict, runs: list[dict]) -> None:
    print(f"{'tool':10} {'steady samples/s':>17} {'(mean)':>8} {'loop s':>7} {'wall s':>7}")
    for tool, row in summary["tools"].items():
        print(f"{tool:10} {row['median']:17.1f} {row['mean']:8.1f} {row['loop_s']:7.1f} {row['wall_s']:7.1f}")
    per_run = ", ".join(f"{r['tool']} {r['median']:.1f}" for r in runs)
    others = [r["other_cpu_s"] for r in runs if r["other_cpu_s"] is not None]
    print(f"runs in order: {per_run}")
    if others:
        print(f"CPU s used by other processes during the runs: {', '.join(f'{o:.0f}' for o in others)}")
    print(f"ratio curate / open_clip (steady median): {summary['ratio']:.3f}  (claim: >= 0.95)")


def environment() -> dict:
    import open_clip
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="clip-tiny", help="curate/open_clip model name")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the rates")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=10, help="lr warmup steps")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers, both tools")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--repeats", type=int, default=2, help="runs per tool, order alternating")
    parser.add_argument("--n", type=int, default=2000, help="image-text pairs in the shards")
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--out", default="benchmarks/results/train_clip.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.device = str(pick_device(args.device))
    with tempfile.TemporaryDirectory(prefix="bench-train-clip-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        spec = make_shards(root / "shards", args.n, args.per_shard)
        model_dir = save_model(args.model, root / "model")
        print(f"{args.n} pairs in {spec} and {model_dir} in {time.perf_counter() - start:.1f} s")
        runs = []
        for repeat in range(args.repeats):
            order = ("curate", "open_clip") if repeat % 2 == 0 else ("open_clip", "curate")
            for tool in order:
                runs.append({"repeat": repeat, **run_tool(tool, args, spec, model_dir, root / f"{tool}-{repeat}")})
                print(describe(runs[-1]))
    summary = summarise(runs)
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps ({args.skip} skipped), {args.device}")
    print_table(summary, runs)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"settings": settings, "environment": environment(), **summary, "claim_holds": summary["ratio"] >= 0.95}
    result["runs"] = runs
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
