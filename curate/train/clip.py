"""``curate train clip``: contrastive training on curate's WebDataset shards, one readable loop.

The model comes from :func:`curate.models.clip.load_clip` (an open_clip architecture, one of our
configs such as ``clip-tiny`` or ``lit-offline``, or a JSON config). The loss is open_clip's
``ClipLoss`` (InfoNCE with the model's learnable temperature), the schedule open_clip's
warmup + cosine. Output folder::

    DIR/open_clip_config.json + open_clip_model.safetensors   final model: load_clip(DIR) (portable)
    DIR/checkpoints/step_0000100.pt   {"state_dict", "optimizer", "step", ...}: resume, or
                                      open_clip.create_model_and_transforms(arch, pretrained=PATH)
    DIR/log.jsonl                      one line per logged step: loss, lr, samples/s, ...
    DIR/train_config.json              the resolved config

Runs in one process by default; under ``torch.distributed`` (``--workers N`` starts it through
Ray Train, see :func:`curate.runtime.train_distributed`) it wraps the model in DDP and gathers
features across ranks for the loss.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from curate import config
from curate.device import pick_device
from curate.errors import NotFound, PresetError
from curate.models.clip import load_clip, save_model_folder
from curate.train.cached import ProjectionHeads, cached_tower_features, feature_batches, one_cpu_thread
from curate.train.common import autocast, cosine_lr, latest_checkpoint, save_checkpoint
from curate.train.data import dataset_size, expand_shards, train_loader, train_pipeline


class ClipTrainConfig(BaseModel):
    """A training preset (``configs/train/*.yaml``); every field documented."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="open_clip architecture, a config in configs/models, or a JSON file.")
    pretrained: str | None = Field(None, description="open_clip tag or checkpoint file to start from.")
    lock_image: bool = Field(False, description="Freeze the image tower (LiT); its projection trains.")
    lock_text: bool = Field(False, description="Freeze the text tower; its projection trains.")
    cache_features: bool = Field(
        False,
        description="With both towers locked: compute each pair's tower features once (eval preprocessing) "
        "and train the projections on them; milliseconds per step instead of two tower passes.",
    )
    batch_size: int = Field(64, gt=1, description="Pairs per optimizer step and process.")
    steps: int | None = Field(None, gt=0, description="Optimizer steps (or give epochs).")
    epochs: float | None = Field(None, gt=0, description="Passes over the data, from sizes.json.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (not on gains/biases).")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas.")
    eps: float = Field(1e-6, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup, then cosine decay.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast dtype on GPU.")
    compile: bool = Field(False, description="torch.compile the model (GPU).")
    data_workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    shuffle_buffer: int = Field(1000, ge=1, description="Samples in the streaming shuffle buffer.")
    save_every: int = Field(100, gt=0, description="Checkpoint every N steps (and at the end).")
    log_every: int = Field(10, gt=0, description="Log every N steps.")
    seed: int = Field(0, description="Seed of model init and data order.")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto.")

    @model_validator(mode="after")
    def _cache_needs_locked_towers(self) -> ClipTrainConfig:
        if self.cache_features and not (self.lock_image and self.lock_text):
            raise ValueError("cache_features needs lock_image: true and lock_text: true (only then are features fixed)")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: config.Overrides = None) -> ClipTrainConfig:
        """Read a preset (a YAML file or a bundled name: ``clip-tiny``); ``overrides`` (``["steps=50"]``,
        ``{"steps": 50}``) win. Problems raise :class:`~curate.errors.PresetError` (see :mod:`curate.config`)."""
        return config.load(cls, "train", path, overrides, PresetError)


def train_clip(cfg: ClipTrainConfig, data: str, output: str | Path, resume: str | bool = False) -> dict:
    """Train in this process (or this rank of a torch.distributed group); returns a summary."""
    rank, world = _dist_info()
    device = pick_device(cfg.device, rank)
    torch.manual_seed(cfg.seed + rank)
    output = Path(output)
    shards = expand_shards(data)
    bundle = load_clip(cfg.model, cfg.pretrained, device=str(device))
    model = _lock(bundle.model, cfg)
    model.output_dict = True  # forward returns {"image_features", "text_features", "logit_scale"}
    optimizer = _optimizer(model, cfg)
    total_steps = _total_steps(cfg, shards, world)
    start_step = _resume(model, optimizer, output, resume, device)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    trained, batches = _model_and_batches(bundle, cfg, shards, output, start_step, device, rank)
    state = _State(
        model=model,
        train_model=_wrap(trained, cfg, device, world),
        optimizer=optimizer,
        scheduler=cosine_lr(optimizer, cfg.lr, cfg.warmup_steps, total_steps),
        loss_fn=_loss(rank, world),
        device=device,
        rank=rank,
        world=world,
    )
    with one_cpu_thread(device) if cfg.cache_features else contextlib.nullcontext():
        last = _loop(state, batches, cfg, output, start_step, total_steps)
    if rank == 0:
        _save(model, optimizer, cfg, output, total_steps)
        name = Path(cfg.model).stem if cfg.model.endswith(".json") else cfg.model
        save_model_folder(model, name, output, bundle.tokenizer)
    return {"steps": total_steps, "start_step": start_step, "output": str(output), **last}


def _model_and_batches(bundle, cfg: ClipTrainConfig, shards, output: Path, start: int, device, rank: int):
    """What trains and what it reads: the model on decoded pairs, or its projections on cached features.

    Every rank computes the features of all shards (the cache is per process); each samples its own
    batches, so the gathered global batch still holds ``world * batch_size`` pairs.
    """
    if not cfg.cache_features:
        pipeline = train_pipeline(
            shards, bundle.preprocess_train, bundle.tokenizer, cfg.batch_size, cfg.shuffle_buffer, cfg.seed + start
        )
        return bundle.model, iter(train_loader(pipeline, cfg.data_workers))
    key = {"model": cfg.model, "pretrained": cfg.pretrained, "shards": shards}
    path = output / ("features.pt" if rank == 0 else f"features-rank{rank}.pt")
    image, text = cached_tower_features(bundle, shards, key, path, cfg.batch_size, cfg.data_workers, device)
    seed = (cfg.seed + start) * 1000 + rank
    return ProjectionHeads(bundle.model), feature_batches(image, text, cfg.batch_size, seed, device)


@dataclass
class _State:
    """What the loop works on: the model (and its DDP/compiled wrapper), optimiser, loss, place."""

    model: torch.nn.Module
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Callable[[int], float]
    loss_fn: torch.nn.Module
    device: torch.device
    rank: int
    world: int


def _loop(state: _State, batches, cfg: ClipTrainConfig, output: Path, step: int, total: int) -> dict:
    """The training loop: batch → loss → step, with logging and checkpoints."""
    log = (output / "log.jsonl").open("a") if state.rank == 0 else None
    bar = tqdm(total=total, initial=step, desc="train clip", disable=state.rank != 0, mininterval=2.0)
    amp = autocast(cfg.precision, state.device)
    tick, seen, last = time.perf_counter(), 0, {}
    while step < total:
        images, texts = next(batches)
        images, texts = images.to(state.device, non_blocking=True), texts.to(state.device, non_blocking=True)
        state.scheduler(step)
        with amp:
            out = state.train_model(images, texts)
            loss = state.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
        state.optimizer.step()
        with torch.no_grad():  # CLIP's clamp: temperature at most 100
            state.model.logit_scale.clamp_(0, math.log(100))
        step, seen = step + 1, seen + len(images) * state.world
        if step % cfg.log_every == 0 or step == total:
            now = time.perf_counter()
            last = {
                "step": step,
                "loss": loss.item(),
                "lr": state.optimizer.param_groups[0]["lr"],
                "logit_scale": state.model.logit_scale.exp().item(),
                "samples_per_s": seen / (now - tick),
            }
            tick, seen = now, 0
            if log:
                log.write(json.dumps(last) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{last['loss']:.3f}", sps=f"{last['samples_per_s']:.0f}")
        if state.rank == 0 and step % cfg.save_every == 0 and step < total:
            _save(state.model, state.optimizer, cfg, output, step)
        bar.update(1)
    bar.close()
    if log:
        log.close()
    return last


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _lock(model, cfg: ClipTrainConfig):
    """LiT: freeze towers (BatchNorm statistics and text dropout included); projections train."""
    from curate.models.lit import lock_image_tower, lock_text_tower

    if cfg.lock_image:
        lock_image_tower(model)
    if cfg.lock_text:
        lock_text_tower(model)
    return model


def _optimizer(model, cfg: ClipTrainConfig) -> torch.optim.AdamW:
    """AdamW without weight decay on gains, biases and the temperature (as open_clip does)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in params if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
    decay = [p for n, p in params if not any(p is q for q in no_decay)]
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": cfg.weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def _total_steps(cfg: ClipTrainConfig, shards: list[str], world: int) -> int:
    if cfg.steps:
        return cfg.steps
    size = dataset_size(shards)
    if cfg.epochs is None or size is None:
        raise ValueError("set `steps`, or `epochs` with a sizes.json beside the shards (curate run writes one)")
    return max(1, math.ceil(cfg.epochs * size / (cfg.batch_size * world)))


def _loss(rank: int, world: int):
    from open_clip.loss import ClipLoss

    return ClipLoss(local_loss=False, gather_with_grad=world > 1, rank=rank, world_size=world)


def _wrap(model, cfg: ClipTrainConfig, device: torch.device, world: int):
    model.train()
    if cfg.compile:
        model = torch.compile(model)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def _save(model, optimizer, cfg: ClipTrainConfig, output: Path, step: int) -> None:
    state = {
        "step": step,
        "model": cfg.model,
        "config": cfg.model_dump(),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    save_checkpoint(state, output, step)


def _resume(model, optimizer, output: Path, resume: str | bool, device) -> int:
    """Load model and optimizer state; returns the step to continue from (0 for a fresh run)."""
    if not resume:
        return 0
    path = latest_checkpoint(output) if resume is True else Path(resume)
    if path is None or not path.is_file():
        raise NotFound(f"--resume: no checkpoint at {path or output / 'checkpoints'}")
    state = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
