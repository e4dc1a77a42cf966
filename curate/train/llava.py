"""``curate train llava``: LLaVA's two stages on curate's LLaVA export, one readable loop.

Stage 1 (feature alignment) trains only the projector on caption pairs (``pretrain.json``);
stage 2 (instruction tuning) trains the projector and the LM, fully or through LoRA adapters
(peft), on conversations (``instruct.json``). The image tower stays frozen in both. The loss
covers assistant tokens only (:mod:`curate.train.llava_data`). Output folder::

    DIR/stage1/, DIR/stage2/           each a model folder (curate.models.llava.load_llava)
    DIR/stageN/checkpoints/step_*.pt   trainable weights + optimizer + step: --resume
    DIR/stageN/log.jsonl               one line per logged step: loss, lr, samples/s, tokens
    DIR/train_config.json              the resolved config
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from curate import config
from curate.device import pick_device
from curate.errors import NotFound, PresetError
from curate.models.llava import IGNORE_INDEX, Llava, LMSpec, build_llava, load_llava, save_llava
from curate.train.common import autocast, cosine_lr, latest_checkpoint, save_checkpoint
from curate.train.llava_data import LlavaDataset, RecordSet, check_files, collate

DATA_FILES = {1: "pretrain.json", 2: "instruct.json"}


class LoraSpec(BaseModel):
    """LoRA adapters (peft) for stage 2."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, gt=0, description="Adapter rank.")
    alpha: int = Field(32, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field("all-linear", description="Modules to adapt (peft names).")


class StageSpec(BaseModel):
    """One training stage."""

    model_config = ConfigDict(extra="forbid")

    lm: Literal["frozen", "full", "lora"] = Field(description="LM weights: frozen (stage 1), full or lora.")
    steps: int = Field(gt=0, description="Optimizer steps.")
    batch_size: int = Field(16, gt=0, description="Records per step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup, then cosine decay.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")


class LlavaTrainConfig(BaseModel):
    """A LLaVA training preset (``configs/train/llava-*.yaml``); every field documented."""

    model_config = ConfigDict(extra="forbid")

    vision: str = Field(description="CLIP for the image tower: open_clip name, our config, or a model folder.")
    vision_pretrained: str | None = Field(None, description="open_clip tag or checkpoint of the image tower.")
    lm: LMSpec = Field(description="Causal LM: {name: hub id or folder} or {config: ..., tokenizer: ...}.")
    stage1: StageSpec = Field(description="Projector-only alignment on caption pairs.")
    stage2: StageSpec = Field(description="Instruction tuning on conversations.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Adapter settings when a stage says lm: lora.")
    max_length: int = Field(512, gt=0, description="Longest sequence (image tokens included).")
    too_long: Literal["error", "drop"] = Field(
        "error",
        description="Records over max_length, found before step 1: one error listing them, or drop (counted).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast dtype on GPU.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this.")
    data_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    save_every: int = Field(200, gt=0, description="Checkpoint every N steps (and at the end).")
    log_every: int = Field(10, gt=0, description="Log every N steps.")
    seed: int = Field(0, description="Seed of the projector init and the data order.")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto.")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: config.Overrides = None) -> LlavaTrainConfig:
        """Read a preset (a YAML file or a bundled name: ``llava-tiny``); ``overrides`` (``["stage1.steps=50"]``,
        ``{"stage1.steps": 50}``) win. Problems raise :class:`~curate.errors.PresetError` (see :mod:`curate.config`)."""
        return config.load(cls, "train", path, overrides, PresetError)


def train_llava(
    cfg: LlavaTrainConfig, data: str | Path, output: str | Path, stages: tuple[int, ...] = (1, 2), resume: bool = False
) -> dict:
    """Run ``stages`` in order; stage 2 starts from ``OUTPUT/stage1``. Every record of their files is checked
    before the first step. Returns each stage's last log line and its ``dropped_too_long`` count."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    device = pick_device(cfg.device)
    todo = [s for s in stages if not (resume and (output / f"stage{s}" / "llava.json").is_file())]  # else finished
    summary: dict = {}
    checked: dict[int, RecordSet] = {}
    for stage in todo:
        folder = output / f"stage{stage}"
        torch.manual_seed(cfg.seed)
        model = _start(cfg, stage, output, device)
        checked = checked or _check(cfg, model, {s: data_file(data, s) for s in todo})  # every file, before step 1
        spec = cfg.stage1 if stage == 1 else cfg.stage2
        _set_trainable(model, spec, cfg.lora)
        last = _run_stage(model, spec, cfg, checked[stage], folder, resume, device)
        save_llava(model, folder)
        summary[f"stage{stage}"] = {**last, "dropped_too_long": checked[stage].dropped}
    return summary


def _check(cfg: LlavaTrainConfig, model: Llava, files: dict[int, Path]) -> dict[int, RecordSet]:
    """The records each stage trains on, every one measured with the model's tokenizer (a file once)."""
    paths = list(dict.fromkeys(files.values()))
    sets = check_files(paths, model.tokenizer, model.num_image_tokens, cfg.max_length, cfg.too_long == "drop")
    by_path = dict(zip(paths, sets, strict=True))
    return {stage: by_path[path] for stage, path in files.items()}


def data_file(data: str | Path, stage: int) -> Path:
    """``RUN/llava`` (a curate export: pretrain.json / instruct.json by stage) or a JSON file."""
    path = Path(data)
    return path / DATA_FILES[stage] if path.is_dir() else path


def _start(cfg: LlavaTrainConfig, stage: int, output: Path, device: torch.device) -> Llava:
    if stage == 1:
        return build_llava(cfg.vision, cfg.vision_pretrained, cfg.lm, str(device))
    if not (output / "stage1" / "llava.json").is_file():
        raise NotFound(f"stage 2 starts from {output / 'stage1'}: run stage 1 first (--stage 1)")
    return load_llava(output / "stage1", str(device))


def _set_trainable(model: Llava, spec: StageSpec, lora: LoraSpec) -> None:
    """Projector always; the LM fully, through LoRA adapters, or not at all."""
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if spec.lm == "full":
        model.lm.requires_grad_(True)
    elif spec.lm == "lora":
        from peft import LoraConfig, get_peft_model

        adapters = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model.lm = get_peft_model(model.lm, adapters)  # marks only the adapters trainable
    model.train()


def _batches(dataset: LlavaDataset, batch_size: int, workers: int, seed: int, pad_id: int):
    """Shuffled batches, epoch after epoch."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        generator=generator,
        num_workers=workers,
        collate_fn=partial(collate, pad_id=pad_id),
    )
    while True:
        yield from loader


def _run_stage(
    model: Llava, spec: StageSpec, cfg: LlavaTrainConfig, data: RecordSet, folder: Path, resume: bool, device
):
    """The loop: batch → loss on assistant tokens → step, with logging and checkpoints."""
    dataset = LlavaDataset(data, model.tokenizer, model.preprocess, model.num_image_tokens, cfg.max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = cosine_lr(optimizer, spec.lr, spec.warmup_steps, spec.steps)
    step = _resume(model, optimizer, folder, device) if resume else 0
    batches = _batches(dataset, spec.batch_size, cfg.data_workers, cfg.seed + step, model.tokenizer.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "log.jsonl").open("a")
    bar = tqdm(total=spec.steps, initial=step, desc=f"train llava {folder.name}", mininterval=2.0)
    amp, tick, seen, last = autocast(cfg.precision, device), time.perf_counter(), 0, {}
    while step < spec.steps:
        batch = {k: v.to(device) for k, v in next(batches).items()}
        tokens = int((batch["labels"] != IGNORE_INDEX).sum())
        if tokens == 0:
            raise RuntimeError(f"{data.path}: a batch has no assistant tokens; the loss would be 0")
        schedule(step)
        with amp:
            loss = model(**batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step, seen = step + 1, seen + len(batch["pixels"])
        if step % cfg.log_every == 0 or step == spec.steps or step == 1:
            now = time.perf_counter()
            last = {"step": step, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}
            last.update(samples_per_s=seen / (now - tick), supervised_tokens=tokens)
            tick, seen = now, 0
            log.write(json.dumps(last) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{last['loss']:.3f}")
        if step % cfg.save_every == 0 and step < spec.steps:
            _save(model, optimizer, folder, step)
        bar.update(1)
    bar.close()
    log.close()
    return last


def _trainable_state(model: Llava) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _save(model: Llava, optimizer, folder: Path, step: int) -> None:
    save_checkpoint(
        {"step": step, "trainable": _trainable_state(model), "optimizer": optimizer.state_dict()}, folder, step
    )


def _resume(model: Llava, optimizer, folder: Path, device) -> int:
    """Load the latest checkpoint of this stage, if any; returns the step to continue from."""
    path = latest_checkpoint(folder)
    if path is None:
        return 0
    state = torch.load(path, map_location=device, weights_only=False)
    missing = set(_trainable_state(model)) ^ set(state["trainable"])
    if missing:
        raise ValueError(f"{path}: trainable weights differ from this config's ({sorted(missing)[:3]}...)")
    model.load_state_dict(state["trainable"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
