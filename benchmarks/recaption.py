"""Benchmark: captions/s of the recaption stage (random weights are fine for speed).

Two measurements per model size and batch size:

- ``model``: in one process, the captioner alone (preprocess + greedy generate), captions/s;
- ``ray``: the ``recaption`` stage through Ray Data as ``curate run`` runs it (an actor pool with
  ``--actors`` actors, a GPU each when present), wall clock, model load excluded by a warm-up.

Sizes: ``tiny`` is configs/train/llava-tiny.yaml (clip-tiny + a 2-layer Llama, byte tokenizer);
``0.5b`` is a real-size LM (Qwen2.5-0.5B's dimensions, its 151,936-word output layer) behind
ViT-B-16's tower (196 image tokens), built from configs with random weights, for GPUs::

    python benchmarks/recaption.py --sizes 0.5b --batch-sizes 32 64 128 --n 2000

Run from the repository root (CPU default: tiny, 128 images)::

    .venv/bin/python benchmarks/recaption.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import yaml
from annotate import make_images  # sibling script: the same synthetic ~256 px JPEGs

from curate import runtime
from curate.device import pick_device
from curate.enrich.recaption import Recaption, decode_image
from curate.models.captioner import LlavaCaptioner
from curate.models.llava import build_llava, save_llava

SIZES = {
    "tiny": None,  # the preset as it is
    "0.5b": {
        "vision": "ViT-B-16",
        "lm": {
            "config": {
                "model_type": "llama",
                "hidden_size": 896,
                "intermediate_size": 4864,
                "num_hidden_layers": 24,
                "num_attention_heads": 14,
                "num_key_value_heads": 2,
                "max_position_embeddings": 2048,
                "vocab_size": 151936,
                "tie_word_embeddings": True,
            },
            "tokenizer": "bytes",
        },
    },
}


def build(size: str, folder: Path, device: str) -> Path:
    """A random-weight model of ``size``, saved as a curate LLaVA folder."""
    preset = yaml.safe_load(Path("configs/train/llava-tiny.yaml").read_text())
    spec = {**preset, **(SIZES[size] or {})}
    model = build_llava(spec["vision"], spec.get("vision_pretrained"), spec["lm"], device)
    return save_llava(model, folder / size)


def model_rate(folder: Path, images: list[bytes], batch_size: int, max_new_tokens: int, device: str) -> float:
    """captions/s of the captioner in this process (after one warm-up batch)."""
    captioner = LlavaCaptioner(folder, device, max_new_tokens)
    decoded = [decode_image(b) for b in images]
    captioner.caption(decoded[:batch_size], "Describe the image briefly.")
    start = time.perf_counter()
    for i in range(0, len(decoded), batch_size):
        captioner.caption(decoded[i : i + batch_size], "Describe the image briefly.")
    return len(decoded) / (time.perf_counter() - start)


def ray_rate(
    folder: Path, images: list[bytes], batch_size: int, max_new_tokens: int, actors: int, warmup: bool = True
) -> float:
    """captions/s through Ray Data (actor pool), wall clock, after a warm-up run (unless ``warmup=False``: the
    dry run, whose numbers are not measurements)."""
    data = pa.table(
        {"key": [f"{i:09d}" for i in range(len(images))], "image": images, "caption": ["alt"] * len(images)}
    )
    cfg = Recaption.Config(model=str(folder), batch_size=batch_size, max_new_tokens=max_new_tokens, actors=actors)
    if warmup:
        runtime.run_stage(data.slice(0, batch_size), Recaption(cfg))
    start = time.perf_counter()
    out = runtime.run_stage(data, Recaption(cfg))
    assert len(out) == len(data) and out.column("caption_synthetic").null_count == 0
    return len(data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(SIZES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--actors", nargs="+", type=int, default=[1])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-warmup", action="store_true", help="no warm-up run (a dry run: not a measurement)")
    parser.add_argument("--out", default="benchmarks/results/recaption.json")
    args = parser.parse_args()
    device = str(pick_device())
    images = make_images(args.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, runtime.session():
        for size in args.sizes:
            folder = build(size, Path(tmp), "cpu")
            for batch_size in args.batch_sizes:
                model = model_rate(folder, images, batch_size, args.max_new_tokens, device)
                for actors in args.actors:
                    ray = ray_rate(folder, images, batch_size, args.max_new_tokens, actors, not args.no_warmup)
                    rows.append(
                        {
                            "size": size,
                            "batch_size": batch_size,
                            "actors": actors,
                            "model_captions_per_s": model,
                            "ray_captions_per_s": ray,
                        }
                    )
    print(f"{args.n} images (~256 px JPEG), up to {args.max_new_tokens} new tokens, greedy, random weights, {device}")
    print(f"{'size':6} {'batch':>6} {'actors':>6} {'model/s':>9} {'ray/s':>8}")
    for r in rows:
        print(
            f"{r['size']:6} {r['batch_size']:6d} {r['actors']:6d} {r['model_captions_per_s']:9.1f} {r['ray_captions_per_s']:8.1f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"n": args.n, "device": device, "max_new_tokens": args.max_new_tokens, "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
