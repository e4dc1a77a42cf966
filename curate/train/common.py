"""What both trainers share: autocast, warmup + cosine schedule, checkpoint paths."""

from __future__ import annotations

from pathlib import Path

import torch


def autocast(precision: str, device: torch.device):
    """bf16/fp16 autocast on a GPU; a disabled context on the CPU or for fp32."""
    if precision == "fp32" or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def cosine_lr(optimizer, base_lr: float, warmup: int, steps: int):
    """open_clip's linear warmup + cosine decay; call the result with the step before each update."""
    from open_clip_train.scheduler import cosine_lr as schedule

    return schedule(optimizer, base_lr, warmup, steps)


def checkpoint_path(output: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return output / "checkpoints" / f"step_{step:07d}.pt"


def latest_checkpoint(output: Path) -> Path | None:
    """The checkpoint with the highest step in ``output``, if any."""
    found = sorted((output / "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None


def save_checkpoint(state: dict, output: Path, step: int) -> Path:
    """Write ``state`` as the checkpoint of ``step``, atomically."""
    path = checkpoint_path(output, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, f"{path}.tmp")
    Path(f"{path}.tmp").replace(path)
    return path
