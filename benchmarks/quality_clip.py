"""The CLIP filter for the quality benchmark: ``lit-offline`` with projections trained on the seed set.

``lit-offline`` locks both pretrained towers (ImageNet EfficientNet-Lite0, all-MiniLM-L6-v2), so
only the two linear projections train (LiT). Their inputs, the towers' pooled features, never
change: :func:`train_filter_model` computes them once per seed pair (eval preprocessing, as the clip
stage scores) and trains the projections on the cached features with open_clip's ``ClipLoss`` and
AdamW, as ``curate train clip`` does with ``cache_features: true``; it is kept separate for the
regularisation a seed set this small needs (feature dropout, a fixed temperature). The result is
saved with :func:`curate.models.clip.save_model_folder`, the folder ``curate train clip`` writes, so
the recipe's clip stage loads it as ``model: FOLDER``.

The seed set is small (~5,600 pairs for 640k projection weights), so the projections overfit
quickly: :class:`FitSettings` holds the settings that separated held-out pairs best (few steps,
dropout on the cached features, a fixed temperature; measured, see the field comments). Longer
training, bigger batches and MLP heads all scored worse on the held-out glyphs.

:func:`calibrate` picks the ``clip_score`` threshold on validation pairs of the seed set (glyphs held
out of training; filter_quality.py uses the part drawn from the pool's own sources, Noto and
OpenMoji, whose scores are distributed as the pool's are): the score below which
``max_clean_loss`` of the true pairs fall. It never looks at the pool.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from curate.demo.emoji_corpus import SeedPart, SeedSet
from curate.models.clip import load_clip, save_model_folder
from curate.models.lit import lock_towers
from curate.train.cached import cached_tower_features
from curate.train.data import expand_shards

MODEL = "lit-offline"


@dataclass(frozen=True)
class FitSettings:
    """How :func:`train_filter_model` trains the projections on the cached tower features."""

    steps: int = 400  # AdamW steps; held-out AUC 0.925 at 200, 0.935 at 400-800 (without dropout: 0.86 at 3,000)
    batch_size: int = 256  # pairs per step (1,024 scored no better, at four times the cost)
    lr: float = 1e-3  # peak learning rate (20 warmup steps, then cosine to 0)
    weight_decay: float = 0.05  # AdamW's, on the projections
    feature_dropout: float = 0.2  # dropout on both towers' features while training: regularises
    logit_scale: float = 10.0  # fixed inverse temperature (learned, it climbs to 16-26 as the heads overfit)
    seed: int = 0


def train_filter_model(seed_set: SeedSet, out: Path, settings: FitSettings | None = None) -> Path:
    """Train lit-offline's projections on the seed set (cached tower features); returns the model folder.

    Reused when ``out`` already holds a model trained with the same settings.
    """
    settings = settings or FitSettings()
    record = {"seed_set": [str(p.train) for p in seed_set.parts], **asdict(settings)}
    done = out / "filter_train.json"
    if done.is_file() and json.loads(done.read_text()).get("settings") == record:
        return out
    torch.manual_seed(settings.seed)
    bundle = load_clip(MODEL)
    model = bundle.model
    lock_towers(model)
    features = [_cached_features(bundle, part) for part in seed_set.parts]
    img, txt = torch.cat([f[0] for f in features]), torch.cat([f[1] for f in features])
    log = _fit(model, img, txt, settings)
    save_model_folder(model.eval(), MODEL, out, bundle.tokenizer)
    done.write_text(json.dumps({"settings": record, "log": log}, indent=1))
    return out


def _cached_features(bundle, part: SeedPart) -> tuple[torch.Tensor, torch.Tensor]:
    """A seed part's tower features (``curate train clip``'s cache_features code), kept beside its shards."""
    shards = expand_shards(str(part.train))
    path = part.train.parent / f"{MODEL}-tower-features.pt"
    return cached_tower_features(bundle, shards, {"model": MODEL, "shards": shards}, path, 64, 0, torch.device("cpu"))


def _fit(model, img: torch.Tensor, txt: torch.Tensor, cfg: FitSettings) -> list:
    """AdamW + warmup/cosine on the projections at a fixed temperature; open_clip's ClipLoss."""
    from open_clip.loss import ClipLoss

    head, proj = model.visual.head, model.text.proj
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg.logit_scale))
    model.logit_scale.requires_grad_(False)
    opt = torch.optim.AdamW([*head.parameters(), *proj.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn, gen, log = ClipLoss(), torch.Generator().manual_seed(cfg.seed), []
    head.train(), proj.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.steps, cfg.lr)
        idx = torch.randperm(len(img), generator=gen)[: cfg.batch_size]
        x, y = (torch.nn.functional.dropout(f[idx], cfg.feature_dropout) for f in (img, txt))
        a = torch.nn.functional.normalize(head(x), dim=-1)
        b = torch.nn.functional.normalize(proj(y), dim=-1)
        loss = loss_fn(a, b, cfg.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(1, cfg.steps // 10) == 0:
            log.append({"step": step + 1, "loss": round(loss.item(), 4)})
    return log


def _lr(step: int, steps: int, lr: float, warmup: int = 20) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def score_pairs(model_dir: Path, images: list[bytes], captions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clip stage run in process: (clip_score, image embeddings, text embeddings) per pair."""
    from curate.signals.clip import ClipScorer

    batch = pa.table({"key": [f"{i:09d}" for i in range(len(images))], "image": pa.array(images, pa.binary()),
                      "caption": captions})  # fmt: skip
    out = ClipScorer(ClipScorer.Config(model=str(model_dir), batch_size=64))(batch)
    emb = {c: np.array(out.column(c).to_pylist(), np.float32) for c in ("clip_image_emb", "clip_text_emb")}
    return np.array(out.column("clip_score").to_pylist(), np.float32), emb["clip_image_emb"], emb["clip_text_emb"]


def validation_scores(model_dir: Path, part: SeedPart, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(true-pair scores, shuffled-pair scores) on a seed part's validation pairs: each image with the
    caption of another emoji."""
    val = pq.read_table(part.val, columns=["image", "caption", "concept"]).to_pylist()
    matched, img, txt = score_pairs(model_dir, [r["image"] for r in val], [r["caption"] for r in val])
    order = list(range(len(val)))
    random.Random(seed).shuffle(order)
    partner = dict(zip(order, order[1:] + order[:1], strict=True))
    keep = [i for i in range(len(val)) if val[i]["concept"] != val[partner[i]]["concept"]]
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    shuffled = np.array([img[i] @ txt[partner[i]] for i in keep], np.float32)
    return matched, shuffled


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half."""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def calibrate(matched: np.ndarray, max_clean_loss: float = 0.02) -> float:
    """The min_score that rejects ``max_clean_loss`` of the true validation pairs."""
    return float(np.quantile(matched, max_clean_loss))
