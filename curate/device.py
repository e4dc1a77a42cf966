"""Which torch device a model runs on: the one place that asks whether there is a GPU.

Light to import: torch is imported when a device is picked, never at module import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(requested: str = "auto", rank: int = 0) -> torch.device:
    """The device to use: ``auto`` is this rank's GPU (``rank`` modulo the visible GPUs) when there is
    one, else the CPU; anything else (``cpu``, ``cuda``, ``cuda:N``) names the device itself.

    Inside a Ray actor only the GPUs it was given are visible, so ``auto`` is its own GPU.
    """
    import torch

    if requested == "auto":
        requested = f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)
