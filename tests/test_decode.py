"""One picture per image: the CLIP stage, the image stage's pHash, recaption, the emitted shards, curate's
loaders and the report's thumbnails all decode an image the same way (curate.images), and the report
obeys the decompression-bomb guard."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.emit.webdataset import WebDatasetWriter
from curate.enrich.recaption import decode_image
from curate.report import grid
from curate.signals.clip import ClipScorer
from curate.signals.image import measure_image, perceptual_hashes
from curate.train.data import iter_pairs

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def red_square_on(background: tuple, mode: str = "RGB") -> Image.Image:
    im = Image.new(mode, (64, 64), background)
    im.paste(RED + (255,) * (mode == "RGBA"), (16, 16, 48, 48))
    return im


def rgba_png() -> tuple[bytes, Image.Image]:
    """Transparent background (its hidden colour black), an opaque red square."""
    return encode(red_square_on((0, 0, 0, 0), "RGBA"), "PNG"), red_square_on(WHITE)


def png16() -> tuple[bytes, Image.Image]:
    """A 16-bit grey gradient over the whole range; 8 bits is each value / 257."""
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    shown = np.round(values / 257).astype(np.uint8)
    return encode(Image.fromarray(values), "PNG"), Image.fromarray(shown, "L").convert("RGB")


def exif_jpeg() -> tuple[bytes, Image.Image]:
    """Stored turned a quarter; EXIF orientation 6 says to display it upright (red over blue)."""
    shown = Image.new("RGB", (48, 96), BLUE)
    shown.paste(RED, (0, 0, 48, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(shown.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif), shown


def animated_gif() -> tuple[bytes, Image.Image]:
    """First frame: a red square on a transparent background; second frame: all green."""
    first = Image.new("P", (64, 64), 0)
    first.putpalette([0, 0, 0, *RED, *GREEN])
    first.paste(1, (16, 16, 48, 48))
    second = Image.new("P", (64, 64), 2)
    second.putpalette([0, 0, 0, *RED, *GREEN])
    out = io.BytesIO()
    first.save(out, "GIF", save_all=True, append_images=[second], transparency=0, duration=100, disposal=2)
    return out.getvalue(), red_square_on(WHITE)


CASES = {"rgba_png": rgba_png, "png16": png16, "exif_jpeg": exif_jpeg, "animated_gif": animated_gif}


def differs(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Mean absolute difference of two RGB pictures (0-255)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean())


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@pytest.fixture(scope="module")
def clip_stage() -> ClipScorer:
    return ClipScorer(ClipScorer.Config(model="clip-tiny"))


@pytest.mark.parametrize("case", CASES)
def test_every_path_sees_the_displayed_first_frame_on_white(case, clip_stage, tmp_path):
    data, shown = CASES[case]()
    fmt = Image.open(io.BytesIO(data)).format.lower()

    assert differs(decode_image(data), shown) < 4  # recaption's input

    batch = pa.table({"image": pa.array([data], pa.binary()), "caption": ["a red square"]})
    clip_input = clip_stage.prepare(batch).column("clip_pixels")[0].as_py()
    geometric = clip_stage._geometric  # the model's resize + crop, the same for both
    expected = np.asarray(geometric(shown), np.uint8)
    assert differs(np.frombuffer(clip_input, np.uint8).reshape(expected.shape), expected) < 4

    with WebDatasetWriter(str(tmp_path / "00000.tar")) as writer:
        jpg = writer.write("k", data, fmt, "a red square", {"key": "k"})
    if fmt != "jpeg":  # re-encoded: the bytes themselves hold the picture, for any reader
        assert differs(Image.open(io.BytesIO(jpg)).convert("RGB"), shown) < 4
    [(_, trained_on, _)] = list(iter_pairs([str(tmp_path / "00000.tar")]))  # curate's loaders
    assert differs(trained_on, shown) < 4

    thumb = Image.open(io.BytesIO(grid.thumbnail(data)))
    assert thumb.size == shown.size and differs(thumb.convert("RGB"), shown) < 6

    measured = measure_image(data, 10**8)["phash"]
    assert hamming(measured, perceptual_hashes(shown, False)["phash"]) <= 4
    assert hamming(measured, perceptual_hashes(Image.open(io.BytesIO(jpg)), False)["phash"]) <= 10


def test_sixteen_bit_is_scaled_not_clipped():
    from curate.images import decode

    values = np.array([[0, 257, 4096, 32768, 65535]], np.uint16)
    decoded = np.asarray(decode(encode(Image.fromarray(values), "PNG")))
    assert decoded.shape == (1, 5, 3)
    assert decoded[0, :, 0].tolist() == [0, 1, 16, 128, 255]


def bomb_png() -> bytes:
    """12000 x 12000 zeros: 144 Mpx (1.3 max_decode_pixels) in a ~140 kB file."""
    return encode(Image.new("1", (12000, 12000)), "PNG")


def test_decode_refuses_past_the_limit_from_the_header_and_a_jpeg_thumbnail_decodes_reduced():
    from curate.images import TooLarge, decode

    with pytest.raises(TooLarge, match="12000x12000 exceeds max_decode_pixels"):
        decode(bomb_png())
    with pytest.raises(TooLarge):
        grid.thumbnail(bomb_png())
    with pytest.raises(TooLarge):
        grid.thumbnail(encode(Image.new("RGB", (64, 64)), "PNG"), max_pixels=1000)
    big_jpeg = encode(Image.new("L", (12000, 12000), 128), "JPEG")
    assert Image.open(io.BytesIO(grid.thumbnail(big_jpeg))).size == (160, 160)  # decoded at 1/8: 2.25 Mpx


def test_a_report_card_of_a_bomb_says_why_without_decoding_it(tmp_path):
    """A card for a 12000 x 12000 PNG in raw/ names the limit; the process stays small (full decode: ~600 MB)."""
    (tmp_path / "raw").mkdir()
    data = bomb_png()
    with tarfile.open(tmp_path / "raw" / "00000.tar", "w") as tar:
        info = tarfile.TarInfo("000000000.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with tarfile.open(tmp_path / "raw" / "00000.tar") as tar:
        offset = tar.getmember("000000000.png").offset_data
    row = {"key": "000000000", "raw_shard": "00000", "image_offset": offset, "image_size": len(data), "url": "u"}
    script = textwrap.dedent(f"""
        import json, resource
        from curate.report import grid
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        html = grid.card({str(tmp_path)!r}, json.loads({json.dumps(json.dumps(row))}))
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"html": html, "grown_mb": grown / 1024}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "12000x12000 exceeds max_decode_pixels" in result["html"] and "<img" not in result["html"]
    assert result["grown_mb"] < 100, result


def test_the_report_uses_the_runs_decode_limit():
    manifest = {"recipe": {"annotate": [{"stage": "hashes"}, {"stage": "image", "max_decode_pixels": 5000}]}}
    assert grid.decode_limit(manifest) == 5000
    assert grid.decode_limit({"recipe": {"annotate": [{"stage": "hashes"}]}}) == 10**8


def test_eval_images_hash_as_the_pool_does(tmp_path):
    """decontaminate's eval folder decodes through the same function as the image stage."""
    from curate.decide.dedup import eval_set_hashes

    data, _ = rgba_png()
    (tmp_path / "eval.png").write_bytes(data)
    _, hashes = eval_set_hashes(None, str(tmp_path))
    assert int(hashes[0]) == measure_image(data, 10**8)["phash"]
