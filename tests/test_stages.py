"""Annotate stages on real bytes, called directly (no Ray)."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pyarrow as pa
from PIL import Image

from curate.signals.caption import CaptionSignals
from curate.signals.hashes import Hashes
from curate.signals.image import ImageSignals


def encode(size=(40, 30), fmt="JPEG", mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 30, 60) if mode == "RGB" else 128).save(out, format=fmt)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, followed by a body of a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def batch(images, captions=None) -> pa.Table:
    captions = captions or ["a caption"] * len(images)
    return pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "caption": pa.array(captions, pa.string()),
            "original_width": pa.nulls(len(images), pa.int32()),
            "original_height": pa.nulls(len(images), pa.int32()),
        }
    )


def test_image_signals_measure_real_images_and_flag_broken_ones():
    jpeg, png = encode((40, 30)), encode((17, 90), "PNG")
    truncated = jpeg[: len(jpeg) // 3]
    html = b"<!doctype html><html><body>not an image</body></html>"
    out = ImageSignals()(batch([jpeg, png, truncated, html, None]))
    rows = out.to_pylist()
    assert (rows[0]["width"], rows[0]["height"], rows[0]["format"], rows[0]["bytes"]) == (
        40,
        30,
        "jpeg",
        len(jpeg),
    )
    assert (rows[1]["width"], rows[1]["height"], rows[1]["format"]) == (17, 90, "png")
    assert rows[0]["decode_error"] is None and rows[1]["decode_error"] is None
    assert rows[2]["decode_error"] and rows[3]["decode_error"]
    assert "BytesIO" not in rows[3]["decode_error"]  # Pillow's buffer repr differs per run; it is dropped
    assert rows[4]["bytes"] is None and rows[4]["decode_error"] is None


def test_decompression_bomb_is_refused_from_the_header():
    bombs = [png_header_only(12000, 12000), png_header_only(20000, 20000)]
    rows = ImageSignals(ImageSignals.Config(max_decode_pixels=10**8))(batch(bombs)).to_pylist()
    assert (rows[0]["width"], rows[0]["height"]) == (12000, 12000)
    assert "exceeds max_decode_pixels" in rows[0]["decode_error"]
    assert "DecompressionBomb" in rows[1]["decode_error"]  # past Pillow's own hard limit


def test_hashes_are_sha256_of_the_exact_bytes():
    images = [encode((8, 8)), encode((9, 9)), None]
    out = Hashes()(batch(images)).column("sha256").to_pylist()
    assert out[:2] == [hashlib.sha256(b).hexdigest() for b in images[:2]]
    assert out[2] is None


def test_caption_counts_handle_null_and_whitespace():
    captions = ["  a red  circle ", None, "", "naïve café"]
    out = CaptionSignals()(batch([None] * 4, captions)).to_pylist()
    assert [(r["caption_chars"], r["caption_words"]) for r in out] == [
        (16, 3),  # DataComp: len(text) of the raw caption
        (0, 0),
        (0, 0),
        (10, 2),
    ]


def test_a_pickled_stage_ships_its_config_not_what_setup_loaded():
    """Ray pickles stages for its workers: loaded models stay behind and setup runs again there."""
    import pickle

    from curate.signals.language import LanguageID

    stage = LanguageID()
    stage.ensure_setup()
    shipped = pickle.loads(pickle.dumps(stage))  # a loaded fastText model itself cannot be pickled
    assert shipped._identifier is None and not shipped._ready and shipped.config == stage.config
    assert shipped(pa.table({"caption": ["a dog running on the beach"]})).column("lang").to_pylist() == ["en"]
