"""`curate calibrate`: the planted near-duplicate radius is recovered from a synthetic pool; false merges
extrapolated to the pool's size bound k; RUN/calibration.json holds the table and the --set items."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
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
)
from curate.calibrate.perturb import near_copy_bytes
from curate.cli import app
from curate.errors import CalibrationError
from curate.recipe import build_recipe


def pattern(rng: np.random.Generator) -> Image.Image:
    """A smooth random colour pattern (8 x 8 noise upsampled): distinct ones are >= 18 pHash bits apart."""
    small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC)


def jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_run(run, images: list[bytes], annotate: list) -> list[str]:
    """A run as annotate leaves it: RUN/raw/00000.tar, RUN/samples (key, phash, sha256, where the bytes are), and a
    manifest whose annotate step is done. Returns the keys."""
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
    assert result["overrides"] == [f"decide.near_dedup.k={planted_k}"]
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
    assert f"curate decide {run} --set decide.near_dedup.k={saved['near_dedup']['recommended']}" in out.output
    assert set(saved) >= {"pool_images", "positives", "negatives", "near_dedup", "semantic_dedup", "overrides"}
    assert saved["n"] == 60 and saved["seed"] == 3 and saved["max_false_merge"] == 0.02
    assert saved["positives"]["pairs"] == 60 and saved["negatives"]["images"] == 40
    assert [r["value"] for r in saved["near_dedup"]["table"]] == list(K_CANDIDATES)
    for row in saved["near_dedup"]["table"]:
        assert set(row) == {"value", "recall", "false_pairs", "false_merge_share", "precision"}
    assert saved["near_dedup"]["closest_distinct_distance"] > saved["near_dedup"]["recommended"]


def test_without_trusted_sets_the_runs_own_duplicates_count_as_false_merges(planted):
    """The default negatives are the run's own images: the 30 planted copies (other bytes, same picture) are
    false pairs at every k, so at a third of the pool no k is safe and none is recommended."""
    run, _, _ = planted
    result = calibrate_run(str(run), n=90, seed=0)
    assert result["positives"]["pairs"] == 90 and result["negatives"]["images"] == 90
    assert result["near_dedup"]["table"][0]["false_pairs"] >= 20
    assert result["near_dedup"]["recommended"] is None and result["overrides"] == []


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
