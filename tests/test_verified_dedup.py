"""Verified dedup: pHash pairs confirmed by the colour signature (and CLIP cosine), semantic dedup
without transitive chains, and the caption veto. Real images drawn with Pillow, decided by the real
policies over a samples table (no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import downloaded_samples
from PIL import Image, ImageDraw

from curate.decide import decide
from curate.decide.dedup import VERIFY_COLOUR
from curate.decide.neardup import all_row_pairs, components, near_pairs
from curate.decide.semantic import caption_facts, captions_disagree, semantic_groups
from curate.images import COLOUR_SIG_LENGTH, colour_distance, colour_signature, decode
from curate.recipe import build_recipe
from curate.signals.image import measure_image

FILLS = {"red": (220, 20, 20), "green": (20, 110, 40), "blue": (60, 60, 255)}  # about the same luma: same pHash


def flag(fill: tuple[int, int, int], size: int = 256) -> Image.Image:
    """A flag on a pole on white: one drawing, any colour."""
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    s = size / 256
    d.rectangle([40 * s, 30 * s, 52 * s, 230 * s], fill=(90, 60, 30))
    d.polygon(
        [(52 * s, 35 * s), (220 * s, 60 * s), (200 * s, 100 * s), (220 * s, 140 * s), (52 * s, 130 * s)], fill=fill
    )
    d.ellipse([100 * s, 60 * s, 140 * s, 100 * s], fill=(255, 255, 255))
    return im


def encoded(im: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def crop(im: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(im.width * fraction), round(im.height * fraction)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


COPIES = {
    "jpeg_q30": lambda im: encoded(im, "JPEG", 30),
    "half": lambda im: encoded(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "double": lambda im: encoded(im.resize((im.width * 2, im.height * 2), Image.Resampling.LANCZOS), "JPEG"),
    "crop2": lambda im: encoded(crop(im, 0.02), "JPEG"),
}


def signals(images: dict[str, bytes]) -> dict:
    """The image stage's columns for ``images`` (key -> bytes), keys in order."""
    rows = [measure_image(data, 10**8) for data in images.values()]
    return {
        "phash": pa.array([r["phash"] for r in rows], pa.uint64()),
        "colour_sig": pa.array([r["colour_sig"] for r in rows], pa.list_(pa.float32())),
        "pixels": [r["pixels"] for r in rows],
    }


def run_decide(tmp_path, columns: dict, policies: list, embeddings: np.ndarray | None = None) -> tuple[dict, dict]:
    """Decide a hand-made run: key -> (reason, dup_of), and the manifest info."""
    (tmp_path / "samples").mkdir(exist_ok=True)
    keys = columns.pop("key")
    pq.write_table(downloaded_samples(keys, **columns), tmp_path / "samples" / "part.parquet")
    if embeddings is not None:
        (tmp_path / "embeddings").mkdir(exist_ok=True)
        emb = pa.array(list(embeddings.astype(np.float16)), pa.list_(pa.float16()))
        pq.write_table(pa.table({"key": keys, "clip_image_emb": emb}), tmp_path / "embeddings" / "part.parquet")
    recipe = build_recipe({"annotate": ["image", {"stage": "clip", "model": "clip-tiny"}], "decide": policies})
    info: dict = {}
    decide(f"{tmp_path}/samples/*.parquet", recipe.decide, tmp_path / "decisions", tmp_path / "embeddings", info)
    rows = pq.read_table(tmp_path / "decisions").to_pylist()
    return {r["key"]: (r["reason"], r["dup_of"]) for r in rows}, info


def test_colour_signature_is_fixed_length_cielab():
    sig = colour_signature(Image.new("RGB", (37, 300), (255, 0, 0)))
    assert sig.dtype == np.float32 and sig.shape == (COLOUR_SIG_LENGTH,)
    assert np.allclose(sig.reshape(-1, 3), [53.24, 80.09, 67.20], atol=0.05)  # CIELAB of sRGB red
    white = colour_signature(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert np.allclose(white.reshape(-1, 3), [100, 0, 0], atol=0.01)
    pairs = np.stack([sig, sig]), np.stack([white, sig])
    # red vs white: the chroma counts; a lightness difference shared by the whole picture does not
    assert colour_distance(*pairs).tolist() == pytest.approx([float(np.linalg.norm([80.09, 67.20])), 0.0], abs=0.05)
    grey, dark = (colour_signature(Image.new("RGB", (8, 8), (v, v, v))) for v in (128, 100))
    assert float(colour_distance(grey, dark)) == pytest.approx(0.0, abs=1e-3)


def test_image_stage_writes_the_colour_signature_from_its_one_decode():
    row = measure_image(encoded(flag(FILLS["red"])), 10**8)
    assert len(row["colour_sig"]) == COLOUR_SIG_LENGTH
    assert np.allclose(row["colour_sig"], colour_signature(decode(encoded(flag(FILLS["red"])))))
    assert "colour_sig" not in measure_image(b"not an image", 10**8)


def test_colour_variants_share_a_phash_but_not_a_colour_signature():
    rows = [measure_image(encoded(flag(fill)), 10**8) for fill in FILLS.values()]
    hashes = np.array([r["phash"] for r in rows], np.uint64)
    assert (components(3, near_pairs(hashes, 8)) == 0).all()  # pHash alone merges all three colours
    sig = np.array([r["colour_sig"] for r in rows])
    i, j = np.triu_indices(3, 1)
    assert (colour_distance(sig[i], sig[j]) > 3 * VERIFY_COLOUR).all()


def test_copies_stay_within_the_default_colour_distance():
    for fill in FILLS.values():
        original = measure_image(encoded(flag(fill)), 10**8)
        for kind, make in COPIES.items():
            copy = measure_image(make(flag(fill)), 10**8)
            bits = int(np.bitwise_count(np.uint64(original["phash"]) ^ np.uint64(copy["phash"])))
            dist = float(colour_distance(np.array(original["colour_sig"]), np.array(copy["colour_sig"])))
            assert bits <= 8 and dist <= VERIFY_COLOUR, (fill, kind, bits, dist)


def test_near_dedup_merges_copies_and_keeps_every_colour(tmp_path):
    """Each colour's copies merge into that colour's largest image; no colour merges with another."""
    images = {}
    for name, fill in FILLS.items():
        images[f"{name}-0"] = encoded(flag(fill))
        images |= {f"{name}-{kind}": make(flag(fill)) for kind, make in COPIES.items()}
    got, info = run_decide(tmp_path, {"key": list(images), **signals(images)}, ["near_dedup"])
    for name in FILLS:
        assert got[f"{name}-double"] == (None, None)  # the most pixels
        assert {got[k] for k in images if k.startswith(name) and k != f"{name}-double"} == {
            ("dup_near", f"{name}-double")
        }
    assert info["near_dedup"]["colour_rejected_pairs"] > 0 and info["near_dedup"]["colour_unchecked_pairs"] == 0
    (tmp_path / "off").mkdir()
    policy = {"policy": "near_dedup", "verify_colour": None}
    unverified, _ = run_decide(tmp_path / "off", {"key": list(images), **signals(images)}, [policy])
    assert sum(reason == "dup_near" for reason, _ in unverified.values()) == len(images) - 1  # before: one group


def test_identical_hashes_of_another_colour_do_not_cut_a_copy_from_its_original(tmp_path):
    """The red flag ranks first, but the blue flag's copy still merges with the blue flag."""
    images = {"a-red": encoded(flag(FILLS["red"])), "b-blue": encoded(flag(FILLS["blue"]))}
    images["c-blue-copy"] = encoded(flag(FILLS["blue"]), "JPEG", 95)
    cols = signals(images)
    cols["phash"] = pa.array([cols["phash"][0].as_py()] * 3, pa.uint64())  # one hash for all three
    cols["pixels"] = [3, 2, 1]
    got, _ = run_decide(tmp_path, {"key": list(images), **cols}, ["near_dedup"])
    assert got == {"a-red": (None, None), "b-blue": (None, None), "c-blue-copy": ("dup_near", "b-blue")}


def test_all_row_pairs_lists_the_pairs_of_equal_hash_groups():
    hashes = np.array([5, 5, 5, 7, 7, 1 << 40, 5], np.uint64)
    pairs = all_row_pairs(hashes, near_pairs(hashes, 2))
    assert pairs.tolist() == [[i, j] for i in range(7) for j in range(i + 1, 7) if 5 not in (i, j)]
    assert (components(7, pairs) == components(7, near_pairs(hashes, 2))).all()
    assert all_row_pairs(hashes, near_pairs(hashes, 2), cap=1).tolist() == near_pairs(hashes, 2).tolist()
    assert all_row_pairs(hashes, np.empty((0, 2), np.int64)).shape == (0, 2)


def test_runs_without_colour_signatures_still_decide_unchecked(tmp_path):
    images = {f"{name}": encoded(flag(fill)) for name, fill in FILLS.items()}
    cols = signals(images)
    del cols["colour_sig"]  # a run annotated before the column existed
    got, info = run_decide(tmp_path, {"key": list(images), **cols}, ["near_dedup"])
    assert sum(reason == "dup_near" for reason, _ in got.values()) == 2
    assert info["near_dedup"]["colour_unchecked_pairs"] == info["near_dedup"]["pairs"] == 3


def test_rows_with_a_null_signature_are_not_checked(tmp_path):
    """A pair missing a signature merges as before verification; a checked pair of colours does not."""
    images = {k: encoded(flag(FILLS[k.split("-")[1]])) for k in ("a-red", "b-green", "c-red", "d-blue")}
    cols = signals(images)
    sig = cols["colour_sig"].to_pylist()
    cols["colour_sig"] = pa.array([sig[0], None, sig[2], sig[3]], pa.list_(pa.float32()))
    h = cols["phash"][0].as_py()
    cols["phash"] = pa.array([h, h, h ^ (2**64 - 1), h ^ (2**64 - 1)], pa.uint64())  # two far-apart groups
    got, info = run_decide(tmp_path, {"key": list(images), **cols}, ["near_dedup"])
    assert got == {
        "a-red": (None, None),
        "b-green": ("dup_near", "a-red"),
        "c-red": (None, None),
        "d-blue": (None, None),
    }
    assert info["near_dedup"]["colour_unchecked_pairs"] == 1 and info["near_dedup"]["colour_rejected_pairs"] == 1


def test_verify_cosine_needs_both_embeddings_close(tmp_path):
    images = {f"{i}-{name}": encoded(flag(fill)) for i, (name, fill) in zip("abc", FILLS.items(), strict=True)}
    emb = np.array([[1.0, 0.0], [0.999, 0.04], [0.0, 1.0]])  # red ~ green, blue apart
    policy = {"policy": "near_dedup", "verify_colour": None, "verify_cosine": 0.9}
    got, info = run_decide(tmp_path, {"key": list(images), **signals(images)}, [policy], emb)
    assert got == {"a-red": (None, None), "b-green": ("dup_near", "a-red"), "c-blue": (None, None)}
    assert info["near_dedup"]["cosine_rejected_pairs"] == 2


# ---- semantic dedup --------------------------------------------------------------------------------


def arc(angles: list[float]) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles), np.zeros(len(angles))], axis=1)


def test_semantic_dedup_does_not_chain_red_to_green_through_yellow():
    """red~yellow and yellow~green are within eps, red and green are not: green is kept."""
    emb = arc([0.0, 0.3, 0.6])  # cos 0.955 per step, 0.825 end to end; eps 0.05
    assert semantic_groups(emb, np.arange(3), 1, 0.05).tolist() == [0, 0, 2]
    assert semantic_groups(emb, np.array([1, 0, 2]), 1, 0.05).tolist() == [1, 1, 1]  # yellow first: both near it
    assert semantic_groups(emb, np.arange(3), 1, 0.05, block_rows=1).tolist() == [0, 0, 2]


def test_semantic_representatives_are_pairwise_apart_on_random_data():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 16))
    emb = np.repeat(centres, 6, axis=0) + rng.normal(scale=0.25, size=(120, 16))
    for block in (7, 4096):
        rep = semantic_groups(emb, rng.permutation(120), 1, 0.1, block_rows=block)
        x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        moved = np.flatnonzero(rep != np.arange(120))
        assert len(moved) and ((x[moved] * x[rep[moved]]).sum(1) > 0.9).all()  # within eps of its own kept row
        kept = np.flatnonzero(rep == np.arange(120))
        close = (x[kept] @ x[kept].T > 0.9) & ~np.eye(len(kept), dtype=bool)
        assert not close.any()  # the kept rows are pairwise apart


def test_caption_facts_and_disagreement():
    assert caption_facts("Two red flags, 3rd row, 2.5 m") == ({"red"}, {2.0, 3.0, 2.5})
    assert caption_facts("A GRAY cat, golden eyes") == ({"grey", "gold"}, set())
    assert captions_disagree("A red flag.", "A green flag.")
    assert captions_disagree("2 cats", "three cats") and captions_disagree("1st place medal", "2nd place medal")
    assert not captions_disagree("A red flag.", "red flag (repost)")
    assert not captions_disagree("A red and white flag", "A red flag")  # a shared colour: no strong disagreement
    assert not captions_disagree("A red flag.", "A flag")  # silence is not disagreement
    assert not captions_disagree(None, "A green flag.")


def test_semantic_dedup_caption_veto(tmp_path):
    emb = arc([0.0, 0.01, 0.02, 0.03])  # all within eps
    captions = ["A red flag.", "A green flag.", "a red flag (repost)", "A yellow flag"]
    cols = {"key": ["0", "1", "2", "3"], "caption": captions, "clip_score": [0.4, 0.3, 0.2, 0.1]}
    plain, _ = run_decide(tmp_path, dict(cols), [{"policy": "semantic_dedup", "eps": 0.05, "n_clusters": 1}], emb)
    assert [plain[k][0] for k in "0123"] == [None, "dup_semantic", "dup_semantic", "dup_semantic"]
    (tmp_path / "veto").mkdir()
    policy = {"policy": "semantic_dedup", "eps": 0.05, "n_clusters": 1, "caption_veto": True}
    veto, _ = run_decide(tmp_path / "veto", dict(cols), [policy], emb)
    assert veto == {"0": (None, None), "1": (None, None), "2": ("dup_semantic", "0"), "3": (None, None)}
