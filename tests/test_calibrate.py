"""`curate calibrate`: the planted near-duplicate radius is recovered from a synthetic pool; false merges
extrapolated to the pool's size bound k; RUN/calibration.json holds the table and the --set items."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw
from test_object_storage import bucket, s3_server, s3fs  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from curate.acquire.raw import _tar_images
from curate.calibrate import calibrate_run
from curate.calibrate.measure import (
    EPS_CANDIDATES,
    K_CANDIDATES,
    calibrate_k,
    hamming,
    hamming_histogram,
    k_table,
    phash,
    recommend,
    recommend_verified,
    table,
    verify_table,
)
from curate.calibrate.perturb import near_copy_bytes
from curate.cli import app
from curate.errors import CalibrationError
from curate.recipe import build_recipe
from curate.signals.image import measure_image


def pattern(rng: np.random.Generator) -> Image.Image:
    """A smooth random colour pattern (8 x 8 noise upsampled): distinct ones are >= 18 pHash bits apart."""
    small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC)


def jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_run(run, images: list[bytes], annotate: list, colour: bool = True) -> list[str]:
    """A run as annotate leaves it: RUN/raw/00000.tar, RUN/samples (key, phash, sha256, colour_sig unless not
    ``colour``, where the bytes are), and a manifest whose annotate step is done. Returns the keys."""
    keys = [f"{i:05d}" for i in range(len(images))]
    (run / "raw").mkdir(parents=True)
    with tarfile.open(run / "raw" / "00000.tar", "w") as tar:
        for key, data in zip(keys, images, strict=True):
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    where = _tar_images(str(run / "raw" / "00000.tar")).drop_columns(["image"])
    samples = pa.table(
        {
            "key": keys,
            "phash": pa.array([phash(d) for d in images], pa.uint64()),
            "sha256": [hashlib.sha256(d).hexdigest() for d in images],
            "raw_shard": ["00000"] * len(keys),
        }
    ).join(where, "key")
    if colour:
        sigs = [measure_image(d, 10**8)["colour_sig"] for d in images]
        samples = samples.append_column("colour_sig", pa.array(sigs, pa.list_(pa.float32())))
    (run / "samples").mkdir()
    pq.write_table(samples.sort_by("key"), run / "samples" / "00000.parquet")
    recipe = build_recipe({"annotate": annotate}, "test").to_dict()
    manifest = {"recipe": recipe, "recipe_source": "test", "steps": {"annotate": {"status": "done"}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return keys


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """60 distinct patterns and a planted copy of 30 of them (JPEG re-encode, brightness, watermark), whose
    pHash radius is the planted k; the key pairs are in pairs.csv."""
    rng, prng = np.random.default_rng(0), random.Random(0)
    originals = [pattern(rng) for _ in range(60)]
    copies = [
        near_copy_bytes(im, ("jpeg", "brightness", "overlay")[i % 3], prng, 0) for i, im in enumerate(originals[:30])
    ]
    run = tmp_path_factory.mktemp("calibrate") / "run"
    keys = write_run(run, [jpeg(im) for im in originals] + copies, ["image", "hashes"])
    pairs = run.parent / "pairs.csv"
    pairs.write_text("key_a,key_b\n" + "".join(f"{keys[i]},{keys[60 + i]}\n" for i in range(30)))
    hashes = [phash(jpeg(im)) for im in originals]
    radius = int(hamming(np.array(hashes[:30], np.uint64), np.array([phash(c) for c in copies], np.uint64)).max())
    closest = int(hamming_histogram(np.array(hashes, np.uint64)).nonzero()[0][0])
    assert 0 < radius < closest - 2  # the pool is as planted: copies within the radius, distinct images farther
    return run, pairs, radius + radius % 2  # pHash distances are even


def test_calibrate_recovers_the_planted_k(planted):
    run, pairs, planted_k = planted
    result = calibrate_run(str(run), duplicates=str(pairs), n=200, seed=1)
    near = result["near_dedup"]
    assert near["recommended"] == planted_k
    rows = {r["value"]: r for r in near["table"]}
    assert rows[planted_k]["recall"] == 1.0 and rows[planted_k]["false_pairs"] == 0
    assert planted_k == 0 or rows[planted_k - 2]["recall"] < 1.0  # a smaller k misses planted copies
    assert result["positives"]["pairs"] == 30 and result["pool_images"] == 90
    assert result["negatives"]["images"] == 30  # the run's distinct images that no pair names
    assert result["overrides"][0] == f"decide.near_dedup.k={planted_k}"
    assert "clip stage" in result["semantic_dedup"]["skipped"]


def test_cli_writes_calibration_json(planted, tmp_path):
    run, _, _ = planted
    rng = np.random.default_rng(9)
    for i in range(40):  # known-distinct images, none of them in the run
        pattern(rng).save(tmp_path / f"{i}.png")
    args = ["calibrate", str(run), "--distinct", str(tmp_path), "--n", "60", "--seed", "3", "--max-false-merge", "0.02"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["overrides"] and saved["overrides"][0].startswith("decide.near_dedup.k=")
    assert f"curate decide {run} " + " ".join(f"--set {o}" for o in saved["overrides"]) in out.output
    assert set(saved) >= {"pool_images", "positives", "negatives", "near_dedup", "semantic_dedup", "overrides"}
    assert saved["n"] == 60 and saved["seed"] == 3 and saved["max_false_merge"] == 0.02
    assert saved["positives"]["pairs"] == 60 and saved["negatives"]["images"] == 40
    assert [r["value"] for r in saved["near_dedup"]["table"]] == list(K_CANDIDATES)
    for row in saved["near_dedup"]["table"]:
        assert set(row) == {"value", "recall", "false_pairs", "observed_pairs", "false_merge_share", "precision"}
    assert saved["near_dedup"]["closest_distinct_distance"] > saved["near_dedup"]["recommended"]


def test_without_trusted_sets_the_runs_own_duplicates_are_not_false_merges(planted):
    """The default negatives are the run's own images, planted copies included (other bytes, same picture): the
    pairs at k = 0, over the near copies' recall at k = 0, estimate how many of the observed pairs are the run's
    own duplicates, and those are not counted as false."""
    run, _, planted_k = planted
    result = calibrate_run(str(run), n=90, seed=0)
    near = result["near_dedup"]
    assert result["positives"]["pairs"] == 90 and result["negatives"]["images"] == 90
    assert near["table"][-1]["observed_pairs"] == 30  # exactly the planted pairs: distinct images are > 16 bits apart
    assert 20 <= near["own_duplicate_pairs"] <= 45
    assert all(row["false_pairs"] <= 3 for row in near["table"])
    assert near["recommended"] is not None and near["recommended"] >= planted_k


def test_false_merges_grow_with_the_pool_and_bound_k():
    """Hashes, no images: copies at 2-12 bits, and 20 distinct pairs at 10 bits among 220 images. For a pool of
    10 images those pairs are harmless and k = 12 catches every copy; extrapolated to 1e7 images they would merge
    most of the pool, so k stops at 8, below them."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=240, dtype=np.uint64)
    flips = [sum(1 << int(b) for b in rng.choice(64, size=d, replace=False)) for d in (2, 4, 6, 8, 10, 12) * 40]
    copies = base ^ np.array(flips, np.uint64)
    distinct = np.concatenate([base[:200], base[:20] ^ np.uint64((1 << 10) - 1)])
    bits = hamming(base, copies)
    small = recommend(k_table(bits, distinct, pool=10, dup_share=0.1), 0.01)
    large = recommend(k_table(bits, distinct, pool=10_000_000, dup_share=0.1), 0.01)
    assert (small.value, small.recall) == (12, 1.0)
    assert large.value == 8 and large.recall == pytest.approx(4 / 6) and large.false_pairs == 0


def test_calibrate_k_without_a_run():
    rng = np.random.default_rng(2)
    images = [jpeg(pattern(rng)) for _ in range(24)]
    found = calibrate_k(images, pool=1000, max_false_merge=0.01, seed=0)
    assert found["k"] in K_CANDIDATES and found["images"] == 24
    assert found["table"][found["k"]]["false_merge_share"] <= 0.01


def test_errors_name_the_file_and_the_fix(planted, tmp_path):
    run, _, _ = planted
    bad = tmp_path / "pairs.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(CalibrationError, match="key_a,key_b"):
        calibrate_run(str(run), duplicates=str(bad))
    bad.write_text("key_a,key_b\n00000,nope\n")
    with pytest.raises(CalibrationError, match="not decoded rows"):
        calibrate_run(str(run), duplicates=str(bad))
    with pytest.raises(CalibrationError, match=r"manifest\.json"):
        calibrate_run(str(tmp_path))


def test_eps_from_the_runs_own_clip_model(tmp_path):
    """A run whose recipe has a clip stage: eps is measured with that stage's model (clip-tiny here), on
    distinct images read from WebDataset tars."""
    rng = np.random.default_rng(4)
    run = tmp_path / "run"
    write_run(run, [jpeg(pattern(rng)) for _ in range(24)], ["image", {"stage": "clip", "model": "clip-tiny"}])
    with tarfile.open(tmp_path / "distinct.tar", "w") as tar:
        for i in range(16):
            data = jpeg(pattern(rng))
            info = tarfile.TarInfo(f"d{i:03d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = calibrate_run(str(run), distinct=str(tmp_path / "distinct.tar"), n=24)
    semantic = result["semantic_dedup"]
    assert semantic["model"] == "clip-tiny" and semantic["column"] == "clip_image_emb"
    assert [r["value"] for r in semantic["table"]] == list(EPS_CANDIDATES)
    assert result["negatives"]["images"] == 16 and result["positives"]["pairs"] == 24
    recalls = [r["recall"] for r in semantic["table"]]
    assert recalls == sorted(recalls) and 0 < semantic["duplicate_cosine"]["median"] <= 1.0001
    if semantic["recommended"] is not None:
        assert f"decide.semantic_dedup.eps={semantic['recommended']}" in result["overrides"]


def test_calibrate_a_run_on_s3(planted, bucket):  # noqa: F811
    """RUN and the pairs file in a bucket (moto's S3 server): read through fsspec, calibration.json written there."""
    run, pairs, planted_k = planted
    fs = s3fs()
    for path in sorted(p for p in run.rglob("*") if p.is_file() and p.name != "calibration.json"):
        fs.put_file(str(path), f"{bucket}/run/{path.relative_to(run)}")
    fs.put_file(str(pairs), f"{bucket}/pairs.csv")
    result = calibrate_run(f"{bucket}/run", duplicates=f"{bucket}/pairs.csv", n=200, seed=1)
    assert result["near_dedup"]["recommended"] == planted_k
    saved = json.loads(fs.cat_file(f"{bucket.removeprefix('s3://')}/run/calibration.json"))
    assert saved["overrides"] == result["overrides"] and saved["run"] == f"{bucket}/run"


def test_verify_colour_lets_k_catch_copies_that_colour_variants_would_share():
    """Colour variants hash alike (0-2 bits) but differ in colour (ΔE 30); copies are within 4 bits and ΔE 7.
    Among 100 distinct images in a pool of 10,000, without the check every k merges the variants; with it, the strictest limit that keeps every copy (8)
    and the smallest k that catches them all (4) are recommended."""
    copy_bits, copy_colour = np.array([0, 2, 4] * 20), np.array([3.0, 5.0, 7.0] * 20)
    pair_bits, pair_colour = np.array([0, 2] * 15), np.full(30, 30.0)
    plain_false = [int((pair_bits <= k).sum()) for k in K_CANDIDATES]
    plain = recommend(
        table(K_CANDIDATES, lambda k: float((copy_bits <= k).mean()), plain_false, 100, 10_000, 0.1), 0.01
    )
    assert plain is None
    rows = verify_table(copy_bits, copy_colour, pair_bits, pair_colour, 100, 10_000, 0.1, 0.01)
    best = recommend_verified(rows, plain)
    assert (best["verify_colour"], best["value"], best["recall"]) == (8.0, 4, 1.0)
    assert {r["verify_colour"]: r.get("recall") for r in rows}[6.0] == pytest.approx(
        2 / 3
    )  # a stricter limit drops copies
    assert [r["value"] for r in rows if r["verify_colour"] == 30.0] == [None]  # at 30 the variants pass the check


def test_missing_inputs_are_user_errors(planted, tmp_path):
    run, _, _ = planted
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no image files"):
        calibrate_run(str(run), distinct=str(tmp_path / "empty"), n=10)
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "raw" / "00000.tar").unlink()
    with pytest.raises(CalibrationError, match="raw shard is missing"):
        calibrate_run(str(broken), n=10)


COLOURS = [(200, 30, 30), (30, 150, 40), (30, 60, 200), (220, 180, 20), (150, 40, 160)]


def drawing(seed: int, colour: tuple[int, int, int]) -> Image.Image:
    """Three random polygons of one colour on white: its colour variants hash alike (pHash sees luminance shapes)."""
    r = random.Random(seed)
    im = Image.new("RGB", (256, 256), (255, 255, 255))
    for _ in range(3):
        ImageDraw.Draw(im).polygon([(r.randint(10, 246), r.randint(10, 246)) for _ in range(r.randint(3, 6))], colour)
    return im


def test_verify_colour_keeps_copies_and_splits_colour_variants(tmp_path):
    """100 drawings and another-colour variant of 40 of them (0-2 pHash bits apart): calibrate recommends a
    verify_colour below every variant pair's colour distance that keeps (nearly) every near copy."""
    from curate.images import colour_distance, colour_signature

    base = [drawing(s, COLOURS[s % 5]) for s in range(100)]
    variants = [drawing(s, COLOURS[(s + 1) % 5]) for s in range(40)]
    write_run(tmp_path / "run", [jpeg(im) for im in base + variants], ["image"])
    result = calibrate_run(str(tmp_path / "run"), n=140)
    verify = result["near_dedup"]["verify_colour"]
    sigs = [np.stack([colour_signature(im) for im in images]) for images in (base[:40], variants)]
    closest_variant = float(colour_distance(*sigs).min())
    assert verify["recommended"] is not None and verify["recommended"] < closest_variant
    row = next(r for r in verify["table"] if r["verify_colour"] == verify["recommended"])
    assert row["recall"] >= 0.95 and row["value"] == verify["k"]
    assert f"decide.near_dedup.verify_colour={verify['recommended']}" in result["overrides"]


def test_a_run_annotated_without_colour_sig_gets_k_alone(tmp_path):
    """decide checks no colour on a run whose samples lack colour_sig, so the --set line must not lean on it."""
    rng = np.random.default_rng(5)
    write_run(tmp_path / "run", [jpeg(pattern(rng)) for _ in range(30)], ["image"], colour=False)
    result = calibrate_run(str(tmp_path / "run"), n=30)
    verify = result["near_dedup"]["verify_colour"]
    assert "table" in verify and "colour_sig" in verify["note"]
    assert not any("verify_colour" in item for item in result["overrides"])
    assert result["overrides"] == [f"decide.near_dedup.k={result['near_dedup']['recommended']}"]
