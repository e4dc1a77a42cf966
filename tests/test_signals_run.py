"""Every reason code reached by a planted sample, and bad inputs that must never crash a run."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_stages import png_header_only  # a PNG that declares a size it does not have

from curate import reasons
from curate.decide.thresholds import ACQUIRE_REASONS, Availability
from curate.demo.corpus import WebObject
from curate.demo.server import LoopbackServer
from curate.recipe import POLICIES, build_recipe
from curate.run import run_pipeline

pytestmark = pytest.mark.slow

ENGLISH = [
    "A golden retriever catching a frisbee in a sunny park",
    "Fresh tomatoes and basil on a wooden cutting board",
    "An old lighthouse on a rocky coast at sunset",
    "Children building a sandcastle on the beach in summer",
    "A red vintage car parked on a quiet city street",
    "Snow covered mountains reflected in a calm blue lake",
    "A bowl of ramen with a soft boiled egg and green onions",
    "Colorful hot air balloons floating over the valley at dawn",
]

RECIPE = {
    "acquire": {"samples_per_shard": 10, "timeout": 3, "allow_private_addresses": True},
    "annotate": ["image", "hashes", "caption", "language"],
    "decide": [
        {"policy": "url_filter", "domains": ["localhost"], "patterns": ["/blocked/"]},
        {
            "policy": "image_size",
            "min_side": 32,
            "min_bytes": 400,
            "max_pixels": 300_000,
            "max_aspect": 4,
        },
        {"policy": "caption_length", "min_chars": 1, "max_chars": 2000},
        "caption_boilerplate",
        {"policy": "language", "languages": ["en"]},
        "exact_dedup",
    ],
    "emit": {"samples_per_shard": 8},
}


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def photo(seed: int, size=(240, 180)) -> Image.Image:
    """A distinct, detailed RGB image (noise + gradient), so files are several KB."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0], dtype=np.float64)[None, :, None]
    pixels = np.clip(base + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def special_images() -> dict[str, bytes]:
    """Odd but real files: each name says what it is."""
    gif_frames = [photo(100 + i, (120, 120)).convert("P") for i in range(3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:], duration=100)
    rotated = photo(7, (300, 200))
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 200 wide, 300 high
    ramp = np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) * 3
    noise = np.random.default_rng(5).integers(0, 4000, (128, 128), dtype=np.uint16)
    sixteen = Image.fromarray(ramp + noise)  # mode I;16, values across the whole 16-bit range
    return {
        "cmyk.jpg": encode(photo(1).convert("CMYK"), "JPEG"),
        "png16.png": encode(sixteen, "PNG"),
        "animated.gif": gif.getvalue(),
        "rotated.jpg": encode(rotated, "JPEG", exif=exif),
        "one.png": encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
        "bomb.png": png_header_only(20000, 20000),
        "truncated.jpg": encode(photo(2), "JPEG")[:600],
        "vector.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><circle r="40"/></svg>',
        "flat.png": encode(Image.new("RGB", (100, 100), (0, 0, 255)), "PNG"),  # a few hundred bytes
        "large.jpg": encode(photo(3, (800, 600)), "JPEG"),
        "wide.jpg": encode(photo(4, (900, 100)), "JPEG"),
    }


def planted(base: str) -> list[tuple[str, str, str | None]]:
    """(url, caption, expected reason) rows; captions are str with surrogate-escaped bad bytes."""
    en = iter(ENGLISH * 4)
    rows = [(f"{base}/ok{i}.jpg", next(en), None) for i in range(4)]
    rows += [
        (f"{base}/cmyk.jpg", next(en), None),
        (f"{base}/png16.png", next(en), None),
        (f"{base}/animated.gif", next(en), None),
        (f"{base}/rotated.jpg", next(en), None),
        (
            f"{base}/ok4.jpg",
            "A caf\udce9 terrace &amp; small  tables in the morning sun",
            None,
        ),  # invalid UTF-8
        ("file:///etc/passwd", next(en), "bad_url"),
        (f"{base}/missing.jpg", next(en), "download_error"),
        (f"{base}/truncated.jpg", next(en), "decode_error"),
        (f"{base}/bomb.png", next(en), "decode_error"),
        (f"{base}/vector.svg", next(en), "decode_error"),
        (f"{base}/blocked/ok5.jpg", next(en), "blocked_url"),
        (base.replace("127.0.0.1", "localhost") + "/ok6.jpg", next(en), "blocked_url"),
        (f"{base}/one.png", next(en), "too_small"),
        (f"{base}/flat.png", next(en), "file_too_small"),
        (f"{base}/large.jpg", next(en), "too_large"),
        (f"{base}/wide.jpg", next(en), "bad_aspect"),
        (f"{base}/ok7.jpg", "", "caption_short"),
        (f"{base}/ok8.jpg", "word " * 2048, "caption_long"),
        (f"{base}/ok9.jpg", "IMG_1234.JPG", "caption_boilerplate"),
        (
            f"{base}/ok10.jpg",
            "Un vieux phare sur une côte rocheuse au coucher du soleil",
            "wrong_language",
        ),
        (f"{base}/copy-of-ok0.jpg", next(en), "dup_exact"),
    ]
    return rows


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    images = special_images() | {f"ok{i}.jpg": encode(photo(10 + i), "JPEG") for i in range(11)}
    images["blocked/ok5.jpg"] = images["ok5.jpg"]
    images["copy-of-ok0.jpg"] = images["ok0.jpg"]
    objects = {f"/{name}": WebObject(f"/{name}", body, "image/jpeg") for name, body in images.items()}
    tmp = tmp_path_factory.mktemp("signals")
    with LoopbackServer(objects) as server:
        rows = planted(server.base_url)
        urls = tmp / "urls.csv"
        with open(urls, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            csv.writer(f).writerows([("url", "caption"), *[(u, c) for u, c, _ in rows]])
        result = run_pipeline(build_recipe(RECIPE, "signals-test"), urls, tmp / "run")
    return tmp / "run", rows, result


def by_key(run_dir, table: str) -> dict:
    rows = pq.read_table(f"{run_dir}/{table}").to_pylist()
    return {r["key"]: r for r in sorted(rows, key=lambda r: r["key"])}


def test_each_reason_is_reached_by_its_planted_sample(run):
    run_dir, rows, _ = run
    got = [r["reason"] for r in by_key(run_dir, "decisions").values()]
    assert got == [expected for _, _, expected in rows]
    recipe = build_recipe(RECIPE, "signals-test")
    reachable = {r for policy in [Availability(), *recipe.decide] for r in policy.reasons}
    reachable -= set(ACQUIRE_REASONS)  # hostile servers: planted in test_hostile_downloads.py
    reachable -= {"no_image"}  # a WebDataset key without an image: planted in test_existing_shards.py
    assert {r for r in got if r} == reachable <= set(reasons.REASONS)
    # every other policy has its planted samples in test_clip_stage.py, test_dedup.py, test_balance.py,
    # test_blocklist.py or test_heads.py (head and score: recipe-named reasons)
    assert set(POLICIES) - {p.name for p in recipe.decide} == {
        "clip_score",
        "near_dedup",
        "semantic_dedup",
        "decontaminate",
        "balance",
        "blocklist",
        "head",
        "score",
    }


def test_odd_images_are_measured_and_emitted(run):
    run_dir, rows, _ = run
    samples = list(by_key(run_dir, "samples").values())
    by_name = {url.rsplit("/", 1)[1]: s for (url, _, _), s in zip(rows, samples, strict=True)}
    assert (by_name["animated.gif"]["frames"], by_name["animated.gif"]["animated"]) == (3, True)
    rotated = by_name["rotated.jpg"]
    assert (rotated["width"], rotated["height"], rotated["exif_orientation"]) == (200, 300, 6)
    assert by_name["cmyk.jpg"]["decode_error"] is None and by_name["png16.png"]["format"] == "png"
    assert by_name["bomb.png"]["width"] is None and "DecompressionBomb" in by_name["bomb.png"]["decode_error"]
    assert by_name["large.jpg"]["pixels"] == 480_000 and by_name["wide.jpg"]["aspect"] == 9.0
    assert "\ufffd" in by_name["ok4.jpg"]["caption"]  # invalid bytes became replacement characters
    emitted = {}
    for tar in sorted(run_dir.glob("shards/*.tar")):
        with tarfile.open(tar) as f:
            for m in f.getmembers():
                emitted[m.name] = f.extractfile(m).read()
    keys = {json.loads(v)["url"].rsplit("/", 1)[1]: k[:-5] for k, v in emitted.items() if k.endswith(".json")}
    sixteen = Image.open(io.BytesIO(emitted[keys["png16.png"] + ".jpg"]))
    assert sixteen.mode == "RGB" and sixteen.convert("L").getextrema()[1] - sixteen.convert("L").getextrema()[0] > 200
    assert Image.open(io.BytesIO(emitted[keys["animated.gif"] + ".jpg"])).format == "JPEG"


def test_emitted_caption_is_the_cleaned_one_and_alt_text_is_kept(run):
    run_dir, _, _ = run
    meta = {r["url"].rsplit("/", 1)[1]: r for r in pq.read_table(f"{run_dir}/metadata").to_pylist()}
    cafe = meta["ok4.jpg"]
    assert cafe["caption_alt"] == "A caf\ufffd terrace &amp; small  tables in the morning sun"
    assert cafe["caption"] == "A caf\ufffd terrace & small tables in the morning sun"
