"""Benchmark: images/s of the CLIP stage end to end (decode -> preprocess -> embed -> score).

Claim checked: the CLIP stage is limited by the model, not by decoding (GPU goal: >= 3,000
images/s for ViT-B/32 on one H100). Two measurements per model:

- ``split``: in one process, the CPU half (``prepare``: JPEG decode + resize + crop) and the model
  half (``process``: normalise + encode image and text + cosine) timed separately, in images/s;
- ``ray``: the stage through Ray Data exactly as ``curate run`` runs it (prepare as CPU tasks on blocks of
  ``batch_size`` rows, overlapping the model in an actor pool with ``--actors`` actors, a GPU each when
  present): the steady-state rate, with the actor pool's start-up (worker, model load) apart, and the ratio
  of the steady rate to the in-process model rate (issue 22's goal: >= 0.8 for clip-tiny on 4,000 images).

Images are ~256 px JPEGs (as benchmarks/annotate.py makes them). Random weights are fine for
speed. On a GPU machine::

    python benchmarks/clipscore.py --models ViT-B-32 --batch-sizes 256 512 1024 --actors 1 2 --n 20000

Run from the repository root (CPU default: clip-tiny and ViT-B-32, 1,000 images)::

    .venv/bin/python benchmarks/clipscore.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow as pa
from annotate import make_captions, make_images  # sibling script: same synthetic images

from curate import runtime
from curate.signals.clip import ClipScorer


def table(n: int) -> pa.Table:
    return pa.table(
        {
            "key": [f"{i:09d}" for i in range(n)],
            "image": pa.array(make_images(n), pa.binary()),
            "caption": make_captions(n),
        }
    )


def split_rates(model: str, data: pa.Table, batch_size: int, threads: int) -> dict:
    """images/s of the CPU half and of the model half, in this process, torch on ``threads`` threads (as many
    as the stage's actor gets from its ``num_cpus``); one model batch first as a warm-up."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        stage = ClipScorer(ClipScorer.Config(model=model, batch_size=batch_size))
        stage.ensure_setup()
        batches = [data.slice(i, batch_size) for i in range(0, len(data), batch_size)]
        start = time.perf_counter()
        prepared = [stage.prepare(b) for b in batches]
        cpu = time.perf_counter() - start
        stage.process(prepared[0])
        start = time.perf_counter()
        for b in prepared:
            stage.process(b)
        model_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(saved)
    return {"prepare_images_per_s": len(data) / cpu, "model_images_per_s": len(data) / model_s, "threads": threads}


def ray_rates(
    model: str, data: pa.Table, batch_size: int, actors: int, decode: str = "cpu", warmup: bool = True
) -> dict:
    """The stage through Ray Data: steady-state images/s and the actor start-up, measured apart.

    ``run_stage`` starts its actor pool (model load included) every call, so a run of one batch is timed
    (start-up + one batch) and then the whole table: steady state is the extra images over the extra time;
    start-up is the one-batch run less one batch at the steady rate. Wall clock of the whole call also reported.
    ``decode``: ``cpu`` (Pillow in CPU tasks before the actors) or ``device`` (in the actors: nvJPEG on
    their GPU, Pillow where there is none). ``warmup=False`` (the dry run, whose numbers are not measurements)
    leaves out the warm-up run.
    """
    from curate.device import pick_device

    gpus = 1.0 / actors if pick_device().type == "cuda" else 0.0  # several actors share one GPU
    cfg = ClipScorer.Config(model=model, batch_size=batch_size, actors=actors, decode=decode, num_gpus=gpus)
    if warmup:
        runtime.run_stage(data.slice(0, batch_size), ClipScorer(cfg))  # worker processes, imports
    start = time.perf_counter()
    runtime.run_stage(data.slice(0, batch_size), ClipScorer(cfg))
    one = time.perf_counter() - start
    start = time.perf_counter()
    out = runtime.run_stage(data, ClipScorer(cfg))
    whole = time.perf_counter() - start
    assert len(out) == len(data)
    steady = (len(data) - batch_size) / max(whole - one, 1e-9)
    return {
        "ray_images_per_s": steady,  # the model's rate once the pool is up
        "ray_wall_images_per_s": len(data) / whole,
        "ray_startup_s": max(0.0, one - batch_size / steady),
    }


def decoder_name(decode: str) -> str:
    """The decoder a ``decode`` mode uses on this machine: pillow, or nvjpeg (device mode with a GPU decoder)."""
    if decode == "cpu":
        return "pillow"
    from curate.device import pick_device
    from curate.signals.device_decode import gpu_jpeg_decoder

    return "nvjpeg" if gpu_jpeg_decoder(pick_device()) is not None else "pillow"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=["clip-tiny", "ViT-B-32"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--actors", nargs="+", type=int, default=[1])
    parser.add_argument("--decode", nargs="+", choices=["cpu", "device"], default=["cpu"], help="clip stage decode")
    parser.add_argument("--no-warmup", action="store_true", help="no warm-up run (a dry run: not a measurement)")
    parser.add_argument("--out", default="benchmarks/results/clipscore.json")
    args = parser.parse_args()
    data = table(args.n)
    rows = []
    with runtime.session():
        for model in args.models:
            for batch_size in args.batch_sizes:
                threads = runtime.torch_threads(ClipScorer.Config().num_cpus)  # an actor's, on a CPU node
                split = split_rates(model, data.slice(0, min(args.n, 16 * batch_size)), batch_size, threads)
                for actors in args.actors:
                    for decode in args.decode:
                        rates = ray_rates(model, data, batch_size, actors, decode, not args.no_warmup)
                        slowest = min(split["prepare_images_per_s"], split["model_images_per_s"])
                        rates["ratio"] = rates["ray_images_per_s"] / split["model_images_per_s"]
                        rates["ratio_to_slowest_half"] = rates["ray_images_per_s"] / slowest
                        row = {"model": model, "batch_size": batch_size, "actors": actors, "decode": decode}
                        rows.append({**row, "decoder": decoder_name(decode), **rates, **split})
    print(
        f"{args.n} images (~256 px JPEG); prepare/model measured in one process (torch on the actor's threads), "
        "ray = the stage via Ray Data"
    )
    print("ray/s: steady state (actor start-up excluded, reported apart); ratio: ray/s over model/s (goal >= 0.8)")
    header = f"{'model':12} {'batch':>6} {'actors':>6} {'decoder':>8} {'prepare/s':>10} {'model/s':>9} {'ray/s':>8}"
    print(header + f" {'ratio':>6} {'start-up s':>10} {'wall/s':>8}")
    for r in rows:
        print(
            f"{r['model']:12} {r['batch_size']:6d} {r['actors']:6d} {r['decoder']:>8} "
            f"{r['prepare_images_per_s']:10.0f} {r['model_images_per_s']:9.1f} {r['ray_images_per_s']:8.1f} "
            f"{r['ratio']:6.2f} {r['ray_startup_s']:10.1f} {r['ray_wall_images_per_s']:8.1f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"n": args.n, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
