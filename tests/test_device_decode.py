"""The clip stage's ``decode: device`` mode: bytes go to the actors and are decoded and resized there.

This machine has no GPU (and its torchvision cannot decode), so these tests run the tensor path with
Pillow as the decoder; the nvJPEG call itself is measured by benchmarks/device.sh on a GPU machine.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.signals.clip import ClipScorer
from curate.signals.device_decode import device_pixels, gpu_jpeg_decoder


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images() -> pa.Table:
    rng = np.random.default_rng(0)
    blobs: list[bytes | None] = []
    for i in range(8):
        h, w = 40 + 9 * i, 90 - 5 * i
        y, x = np.mgrid[0:h, 0:w]
        array = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 40 * i)], -1).astype(np.uint8)
        array = np.clip(array + rng.integers(0, 20, array.shape), 0, 255).astype(np.uint8)
        blobs.append(_encoded(array, ("JPEG", "PNG", "WEBP")[i % 3]))
    blobs += [b"\xff\xd8\xff not a jpeg", b"<html>", None]
    keys = [f"{i:03d}" for i in range(len(blobs))]
    return pa.table({"key": keys, "image": pa.array(blobs, pa.binary()), "caption": ["a colour gradient"] * len(keys)})


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    """clip-tiny saved once, so every process (and actor) loads the same weights."""
    from curate.models.clip import load_clip, save_model_folder

    return str(save_model_folder(load_clip("clip-tiny").model, "clip-tiny", tmp_path_factory.mktemp("m") / "clip"))


def test_device_mode_scores_equal_the_cpu_path_in_process(images, model_folder):
    """Same scores and embeddings as decode: cpu, and the same rows without a score."""
    cpu = ClipScorer(model=model_folder)(images)
    stage = ClipScorer(model=model_folder, decode="device")
    device = stage(images)
    assert stage.decoder == "pillow"  # no GPU here
    assert not stage.runs_prepare() and ClipScorer(model=model_folder).runs_prepare()
    a, b = cpu.column("clip_score").to_pylist(), device.column("clip_score").to_pylist()
    assert [s is None for s in a] == [s is None for s in b] == [False] * 8 + [True] * 3
    np.testing.assert_allclose(b[:8], a[:8], atol=2e-3)
    ea, eb = (np.array(t.column("clip_image_emb").to_pylist()[:8], np.float32) for t in (cpu, device))
    assert (np.sum(ea * eb, 1) > 0.999).all()
    assert "clip_pixels" not in device.column_names


def test_device_mode_through_ray_skips_the_prepare_tasks(images, model_folder, ray_session):
    from curate import runtime

    local = ClipScorer(model=model_folder)(images)
    remote = runtime.run_stage(images, ClipScorer(model=model_folder, decode="device", batch_size=4))
    scores = dict(zip(remote.column("key").to_pylist(), remote.column("clip_score").to_pylist(), strict=True))
    expected = local.column("clip_score").to_pylist()
    assert [scores[k] is None for k in local.column("key").to_pylist()] == [s is None for s in expected]
    got = [scores[k] for k in local.column("key").to_pylist()[:8]]
    np.testing.assert_allclose(got, expected[:8], atol=2e-3)


def test_decode_limit_and_no_gpu_decoder_on_cpu(images):
    import torch

    assert gpu_jpeg_decoder(torch.device("cpu")) is None
    big = images.column("image")[0].as_py()  # 40 x 90 pixels
    out = device_pixels([big], lambda x: x, torch.device("cpu"), None, max_pixels=40 * 90 - 1)
    assert out == [None]  # past the decode limit: no pixels, as on the CPU path
    (tensor,) = device_pixels([big], lambda x: x, torch.device("cpu"), None, max_pixels=40 * 90)
    assert tensor.shape == (3, 40, 90) and tensor.dtype == torch.uint8
