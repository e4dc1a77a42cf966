"""Decode and resize images next to the model: nvJPEG on the actor's GPU, Pillow for the rest.

The ``clip`` stage's ``decode: device`` mode sends encoded bytes to its actors instead of
pixels decoded on CPU tasks. There, JPEGs within the decode limit are decoded in one batched call
of ``torchvision.io.decode_jpeg(..., device="cuda")`` and resized and cropped as tensors by the
same torchvision transforms open_clip's eval preprocessing uses, so the CPU does next to no work
per image. Everything else (PNG, WebP, GIF, a JPEG nvJPEG refuses, or no usable GPU decoder, as
with the CPU build of torch next to a CUDA torchvision) is decoded by :func:`curate.images.decode`
exactly as the CPU path does, then follows the same tensor path. An image nothing can decode
gives ``None`` (no score), as on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from curate.images import MAX_DECODE_PIXELS, decode, open_image

log = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8\xff"


def tensor_geometric(geometric: Any) -> Callable:
    """The resize/crop steps of open_clip's eval transform that also take (3, H, W) uint8 tensors.

    Steps that only convert PIL modes (``MaybeConvertMode``, ``_convert_to_rgb``) are left out:
    decoded tensors are RGB already.
    """
    steps = [t for t in getattr(geometric, "transforms", [geometric]) if "Convert" not in type(t).__name__]
    steps = [t for t in steps if getattr(t, "__name__", "") != "_convert_to_rgb"]

    def apply(x):
        for step in steps:
            x = step(x)
        return x

    return apply


def gpu_jpeg_decoder(device: Any) -> Callable | None:
    """``decode_jpeg`` bound to ``device`` when it works there (probed on one tiny JPEG), else None."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        from curate.models.compat import ensure_torchvision

        ensure_torchvision()
        probe = _tiny_jpeg()
        decode_jpeg([torch.frombuffer(bytearray(probe), dtype=torch.uint8)], mode=ImageReadMode.RGB, device=device)
    except Exception as err:  # a CPU-only torchvision build, a missing nvJPEG, ...
        log.warning("GPU JPEG decode unavailable on %s (%s); decoding with Pillow in the actor", device, err)
        return None

    def decode_batch(blobs: list[bytes]) -> list:
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)

    return decode_batch


def device_pixels(
    images: Sequence[bytes | None],
    geometric: Callable,
    device: Any,
    jpeg_decoder: Callable | None,
    max_pixels: int | None = MAX_DECODE_PIXELS,
) -> list:
    """Per image: a (3, H, W) uint8 tensor on ``device`` after ``geometric``, or None if undecodable."""
    out: list = [None] * len(images)
    gpu = [i for i, b in enumerate(images) if jpeg_decoder is not None and _gpu_decodable(b, max_pixels)]
    for i, tensor in zip(gpu, _decode_jpegs([images[i] for i in gpu], jpeg_decoder), strict=True):
        if tensor is not None:
            out[i] = geometric(tensor)
    for i, data in enumerate(images):
        if out[i] is None and data is not None:
            out[i] = _pillow_tensor(data, geometric, device, max_pixels)
    return out


def _decode_jpegs(blobs: list[bytes], jpeg_decoder: Callable | None) -> list:
    """One batched GPU call; if the batch fails, one call per image so one bad JPEG costs only itself."""
    if not blobs or jpeg_decoder is None:
        return []
    try:
        return list(jpeg_decoder(blobs))
    except Exception:
        return [_one_jpeg(b, jpeg_decoder) for b in blobs]


def _one_jpeg(blob: bytes, jpeg_decoder: Callable) -> Any:
    try:
        return jpeg_decoder([blob])[0]
    except Exception:  # Pillow gets its turn
        return None


def _gpu_decodable(data: bytes | None, max_pixels: int | None) -> bool:
    """A JPEG whose header says it fits the decode limit (decode bombs never reach the GPU)."""
    if data is None or not data.startswith(JPEG_MAGIC):
        return False
    try:
        with open_image(data) as im:
            return max_pixels is None or im.width * im.height <= max_pixels
    except Exception:
        return False


def _pillow_tensor(data: bytes, geometric: Callable, device: Any, max_pixels: int | None) -> Any:
    import torch

    try:
        im = decode(data, max_pixels)
    except Exception:  # undecodable or past the decode limit: no score (the image stage records decode_error)
        return None
    return geometric(torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).to(device))


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 64, 32)).save(buffer, "JPEG")
    return buffer.getvalue()
