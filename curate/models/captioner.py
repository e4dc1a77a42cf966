"""Captioners: curate's own LLaVA checkpoints, or Hugging Face image-to-text / vision-language models.

Both take PIL images and one instruction and return one caption per image, batched, greedy by
default. ``load_captioner(model)`` picks the backend: a folder with ``llava.json`` (or a ``curate
train llava`` output) is ours; anything else is a transformers id or folder
(``AutoModelForImageTextToText``: BLIP, LLaVA-HF, Qwen-VL, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import torch
from PIL import Image

from curate.device import pick_device
from curate.images import decode, to_rgb
from curate.models.compat import ensure_torchvision


class Captioner(Protocol):
    def caption(self, images: list[Image.Image], prompt: str) -> list[str]: ...


class LlavaCaptioner:
    """A checkpoint written by ``curate train llava``."""

    def __init__(self, path: str | Path, device: str = "cpu", max_new_tokens: int = 64, num_beams: int = 1) -> None:
        from curate.models.llava import load_llava

        self.model = load_llava(path, device)
        self.device, self.max_new_tokens, self.num_beams = device, max_new_tokens, num_beams

    def caption(self, images: list[Image.Image], prompt: str) -> list[str]:
        pixels = torch.stack([self.model.preprocess(to_rgb(im)) for im in images]).to(self.device)
        prompts = [self.model.prompt_ids(prompt)] * len(images)
        return self.model.generate(pixels, prompts, self.max_new_tokens, num_beams=self.num_beams)


class HFCaptioner:
    """A transformers image-text-to-text model (hub id or folder) with its processor.

    With a chat template (vision-language models) the prompt goes in a user message with the
    image; without one (BLIP-style captioners) it is the text prefix, removed from the output.
    """

    def __init__(self, name: str, device: str = "cpu", max_new_tokens: int = 64, num_beams: int = 1) -> None:
        ensure_torchvision()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(name)
        self.model = AutoModelForImageTextToText.from_pretrained(name).to(device).eval()
        self.device, self.max_new_tokens, self.num_beams = device, max_new_tokens, num_beams
        self.chat = bool(getattr(self.processor, "chat_template", None))

    @torch.no_grad()
    def caption(self, images: list[Image.Image], prompt: str) -> list[str]:
        images = [to_rgb(im) for im in images]
        if self.chat:
            message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = [self.processor.apply_chat_template(message, add_generation_prompt=True)] * len(images)
        else:
            text = [prompt] * len(images) if prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt", padding=True).to(self.device)
        out = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
        )
        if self.chat and "input_ids" in inputs:  # decoder-only: the output repeats the prompt
            out = out[:, inputs["input_ids"].shape[1] :]
        captions = [c.strip() for c in self.processor.batch_decode(out, skip_special_tokens=True)]
        if not self.chat and prompt:
            captions = [c[len(prompt) :].strip() if c.lower().startswith(prompt.lower()) else c for c in captions]
        return captions


def is_llava_folder(model: str | Path) -> bool:
    """True for a curate LLaVA model folder or a ``curate train llava`` output."""
    path = Path(model)
    return any((p / "llava.json").is_file() for p in (path, path / "stage2", path / "stage1"))


def load_captioner(
    model: str,
    backend: Literal["auto", "curate", "hf"] = "auto",
    device: str = "cpu",
    max_new_tokens: int = 64,
    num_beams: int = 1,
) -> Captioner:
    """The captioner for ``model`` (see the module docstring for ``auto``)."""
    if backend == "curate" or (backend == "auto" and is_llava_folder(model)):
        return LlavaCaptioner(model, device, max_new_tokens, num_beams)
    return HFCaptioner(model, device, max_new_tokens, num_beams)


def check_captioner(model: str, backend: str = "auto") -> None:
    """Fail fast in the driver when ``model`` cannot be found (or, for a hub id, fetched)."""
    if backend == "curate" or (backend == "auto" and is_llava_folder(model)):
        from curate.models.llava import resolve_checkpoint

        resolve_checkpoint(model)
        return
    ensure_torchvision()
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise RuntimeError(
            f"captioner {model!r} is neither a curate LLaVA folder nor a loadable Hugging Face model "
            f"({type(err).__name__}: {str(err)[:160]}). Without a model hub, train one: "
            "`curate train llava --config configs/train/llava-tiny.yaml ...` and give its output folder."
        ) from None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def list_images(paths: list[Path]) -> list[Path]:
    """Image files among ``paths``, folders expanded (sorted); a missing path is an error."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    return found


def caption_files(
    paths: list[Path], model: str, prompt: str, max_new_tokens: int = 64, batch_size: int = 16
) -> list[tuple[str, str]]:
    """(path, caption) for every image under ``paths``; an unreadable image gets an error message."""
    from tqdm.auto import tqdm

    device = pick_device()
    captioner = load_captioner(model, device=device, max_new_tokens=max_new_tokens)
    files = list_images(paths)
    rows: list[tuple[str, str]] = []
    for start in tqdm(range(0, len(files), batch_size), desc="caption", unit="batch", disable=len(files) <= batch_size):
        batch, opened = files[start : start + batch_size], []
        for path in batch:
            try:
                opened.append((path, decode(path)))
            except (OSError, ValueError) as err:
                rows.append((str(path), f"[unreadable image: {err}]"))
        captions = captioner.caption([im for _, im in opened], prompt) if opened else []
        rows += [(str(path), text) for (path, _), text in zip(opened, captions, strict=True)]
    return rows
