"""Deduplication policies: semantic dedup and keep preference on constructed tables (no Ray), and
planted duplicates spread over shards through a real run (pHash near-dups, exact, decontamination)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import downloaded_samples
from PIL import Image, ImageDraw

from curate.decide import decide
from curate.recipe import build_recipe


def write_run(tmp_path, samples: dict, embeddings: np.ndarray | None = None):
    (tmp_path / "samples").mkdir()
    pq.write_table(pa.table(samples), tmp_path / "samples" / "part.parquet")
    if embeddings is not None:
        (tmp_path / "embeddings").mkdir()
        emb = pa.array(list(embeddings.astype(np.float16)), pa.list_(pa.float16()))
        pq.write_table(
            pa.table({"key": samples["key"], "clip_image_emb": emb}), tmp_path / "embeddings" / "part.parquet"
        )


def base_columns(n: int) -> dict:
    return downloaded_samples([f"{i:04d}" for i in range(n)]).to_pydict()


def run_decide(tmp_path, policies: list) -> dict:
    recipe = build_recipe(
        {"annotate": ["image", "hashes", {"stage": "clip", "model": "clip-tiny"}], "decide": policies}
    )
    out = tmp_path / "decisions"
    decide(f"{tmp_path}/samples/*.parquet", recipe.decide, out, tmp_path / "embeddings")
    return {r["key"]: (r["reason"], r["dup_of"]) for r in pq.read_table(out).to_pylist()}


def test_semantic_dedup_keeps_the_best_scored_member_of_each_group(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 64))
    emb[10] = emb[3] + rng.normal(scale=1e-3, size=64)  # group {3, 10, 41}
    emb[41] = emb[3] + rng.normal(scale=1e-3, size=64)
    emb[50] = emb[7] + rng.normal(scale=1e-3, size=64)  # group {7, 50}
    cols = base_columns(60) | {"clip_score": [0.1] * 60}
    cols["clip_score"][41] = 0.9  # the best of its group: kept although its key is larger
    write_run(tmp_path, cols, emb)
    got = run_decide(tmp_path, [{"policy": "semantic_dedup", "eps": 0.01, "n_clusters": 1}])
    dups = {k: v for k, v in got.items() if v[0]}
    assert dups == {
        "0003": ("dup_semantic", "0041"),
        "0010": ("dup_semantic", "0041"),
        "0050": ("dup_semantic", "0007"),
    }


def test_semantic_dedup_without_embeddings_says_what_to_add(tmp_path):
    write_run(tmp_path, base_columns(3) | {"clip_score": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="add the clip stage"):
        run_decide(tmp_path, ["semantic_dedup"])


def test_exact_dedup_prefers_larger_images_then_smaller_keys(tmp_path):
    cols = base_columns(4) | {"sha256": ["a", "a", "a", "b"]}
    cols["pixels"] = [10_000, 10_000, 30_000, 10_000]
    write_run(tmp_path, cols)
    got = run_decide(tmp_path, [{"policy": "exact_dedup", "prefer": ["pixels desc", "key asc"]}])
    assert got["0002"] == (None, None)
    assert got["0000"] == ("dup_exact", "0002") and got["0001"] == ("dup_exact", "0002")


# ---- planted duplicates through a real run ---------------------------------------------------


def scene(subject: int, variant: int = 0, size=(320, 240)) -> Image.Image:
    """A photo-like image: background by ``subject``, objects by ``variant`` (same subject, new shot)."""
    rng = np.random.default_rng(subject)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = (np.sin(x / rng.uniform(8, 40) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(8, 40))) * 60 + 128
    tint = rng.uniform(0.5, 1.2, 2)
    rgb = np.stack([base * tint[0], base[::-1] * tint[1], np.full_like(base, rng.uniform(40, 220))], -1)
    im = Image.fromarray(np.clip(rgb + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))
    draw, objects = ImageDraw.Draw(im), np.random.default_rng(1000 * subject + variant)
    for _ in range(4):
        cx, cy, r = objects.integers(20, w - 20), objects.integers(20, h - 20), objects.integers(25, 60)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in objects.integers(0, 255, 3)))
    return im


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()


def crop(im: Image.Image, fraction: float) -> Image.Image:
    dx, dy = int(im.width * fraction), int(im.height * fraction)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


def overlay(im: Image.Image) -> Image.Image:
    im = im.copy()
    ImageDraw.Draw(im).text((10, 10), "(c) stock photo 2024", fill=(255, 255, 255))
    return im


COPIES = {  # kind -> (make the copy from the original's JPEG, the reason it must get at the default k)
    "identical": (lambda data: data, "dup_exact"),
    "jpeg_q30": (lambda data: jpeg(Image.open(io.BytesIO(data)), 30), "dup_near"),
    "half": (lambda data: jpeg(Image.open(io.BytesIO(data)).resize((160, 120))), "dup_near"),
    "double": (lambda data: jpeg(Image.open(io.BytesIO(data)).resize((640, 480))), "dup_near"),
    "crop2": (lambda data: jpeg(crop(Image.open(io.BytesIO(data)), 0.02)), "dup_near"),
    "overlay": (lambda data: jpeg(overlay(Image.open(io.BytesIO(data)))), "dup_near"),
}


@pytest.fixture(scope="module")
def dedup_run(ray_session, tmp_path_factory):
    from curate.demo.corpus import WebObject
    from curate.demo.server import LoopbackServer
    from curate.run import run_pipeline

    originals = {f"/s{s}.jpg": jpeg(scene(s)) for s in range(16)}
    objects = dict(originals)
    objects["/s15-mirror.jpg"] = originals["/s15.jpg"]  # a second identical copy of the contaminated image
    truth = {f"/s{s}.jpg": ("original", None) for s in range(16)} | {"/s15-mirror.jpg": ("mirror", None)}
    for s in range(8):  # copies of subjects 0-7, one of each kind
        for kind, (make, _) in COPIES.items():
            objects[f"/s{s}-{kind}.jpg"] = make(originals[f"/s{s}.jpg"])
            truth[f"/s{s}-{kind}.jpg"] = (kind, f"/s{s}.jpg")
    for s in range(8, 16):  # a different shot of the same subject: must NOT be merged
        objects[f"/s{s}-other-shot.jpg"] = jpeg(scene(s, variant=1))
        truth[f"/s{s}-other-shot.jpg"] = ("same_subject", None)
    paths = sorted(objects, key=lambda p: zlib.crc32(p.encode()))  # copies land in other shards than originals
    tmp = tmp_path_factory.mktemp("dedup")
    eval_dir = tmp / "eval"
    eval_dir.mkdir()
    (eval_dir / "benchmark-1.jpg").write_bytes(jpeg(Image.open(io.BytesIO(originals["/s15.jpg"])).resize((200, 150))))
    recipe = {
        "acquire": {"samples_per_shard": 10, "timeout": 3, "allow_private_addresses": True},
        "annotate": ["image", "hashes", "caption"],
        "decide": [{"policy": "decontaminate", "eval_images": str(eval_dir)}, "exact_dedup", "near_dedup"],
        "emit": {"samples_per_shard": 32},
    }
    web = {p: WebObject(p, body, "image/jpeg") for p, body in objects.items()}
    with LoopbackServer(web) as server:
        urls = tmp / "urls.csv"
        urls.write_text("url,caption\n" + "".join(f"{server.url(p)},a photo\n" for p in paths))
        run_pipeline(build_recipe(recipe, "dedup-test"), urls, tmp / "run")
    rows = pq.read_table(tmp / "run" / "decisions").to_pylist()
    by_path = {r["url"].split("/", 3)[3].join(["/", ""]): r for r in rows}
    return by_path, truth


@pytest.mark.slow
def test_each_group_keeps_its_largest_member_and_the_rest_point_at_it(dedup_run):
    """Every planted copy is caught (identical bytes: dup_exact; the other kinds: dup_near at the
    default k), and each group keeps one member: the most pixels (the double-size copy)."""
    rows, truth = dedup_run
    for s in range(8):
        group = [p for p, (_, original) in truth.items() if original == f"/s{s}.jpg"] + [f"/s{s}.jpg"]
        kept = [p for p in group if rows[p]["keep"]]
        assert kept == [f"/s{s}-double.jpg"], (s, kept)
        removed = [rows[p] for p in group if p not in kept]
        assert {r["reason"] for r in removed} <= {"dup_exact", "dup_near"}
        assert {r["dup_of"] for r in removed} <= {rows[p]["key"] for p in group}
        pair = {rows[f"/s{s}.jpg"]["reason"], rows[f"/s{s}-identical.jpg"]["reason"]}
        assert "dup_exact" in pair  # byte-identical copies are exact duplicates of each other


@pytest.mark.slow
def test_precision_and_recall_on_the_planted_set(dedup_run):
    rows, truth = dedup_run
    dup_reasons = {"dup_exact", "dup_near"}
    copies = {p for p, (kind, _) in truth.items() if kind in COPIES}
    planted = copies | {f"/s{s}.jpg" for s in range(8)}  # every member of the 8 groups...
    planted -= {f"/s{s}-double.jpg" for s in range(8)}  # ...but the one each group keeps
    flagged = {p for p, r in rows.items() if r["reason"] in dup_reasons}
    assert len(flagged & planted) / len(planted) == 1.0  # recall
    assert len(flagged & planted) / len(flagged) == 1.0  # precision: no original, no other shot merged
    same_subject = [p for p, (kind, _) in truth.items() if kind == "same_subject"]
    assert all(rows[p]["keep"] for p in same_subject)


@pytest.mark.slow
def test_decontamination_removes_pool_copies_of_evaluation_images(dedup_run):
    rows, _ = dedup_run
    assert rows["/s15.jpg"]["reason"] == "eval_contaminated" and rows["/s15.jpg"]["dup_of"] == "eval:benchmark-1.jpg"
    contaminated = sorted(p for p, r in rows.items() if r["reason"] == "eval_contaminated")
    assert contaminated == ["/s15-mirror.jpg", "/s15.jpg"]  # identical copies go together


def test_decontaminate_from_evaluation_shards(tmp_path):
    """An evaluation set given as WebDataset shards: a pool image within k bits is removed."""
    import tarfile

    from curate.signals.image import perceptual_hashes

    eval_image = scene(3)
    shards = tmp_path / "eval-shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for name, data in (("bench-7.jpg", jpeg(eval_image)), ("bench-7.txt", b"a benchmark image")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    near = perceptual_hashes(Image.open(io.BytesIO(jpeg(eval_image.resize((160, 120)), 40))), False)["phash"]
    far = perceptual_hashes(scene(4), False)["phash"]
    write_run(tmp_path, base_columns(2) | {"phash": pa.array([near, far], pa.uint64())})
    got = run_decide(tmp_path, [{"policy": "decontaminate", "eval_shards": str(shards)}])
    assert got == {"0000": ("eval_contaminated", "eval:bench-7"), "0001": (None, None)}


def test_caption_hash_matches_captions_equal_up_to_case_and_spacing():
    from curate.signals.caption import CaptionSignals

    out = CaptionSignals()(pa.table({"caption": ["A Red  Car", "a red car", "a blue car"]}))
    hashes = out.column("caption_hash").to_pylist()
    assert hashes[0] == hashes[1] != hashes[2]
