"""Policy ``blocklist``: planted listed images, exact and re-encoded, are all rejected; nothing else is."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.decide import decide
from curate.decide.blocklist import BlocklistError, bands
from curate.recipe import build_recipe
from curate.signals.hashes import Hashes
from curate.signals.image import ImageSignals, perceptual_hashes

N = 40
EXACT = [3, 11, 25]  # listed by sha256: these very bytes
REENCODED = [7, 19, 33]  # listed by the pHash of a re-encoded, half-size copy the list's owner holds
COPY_OF = 3  # the pool holds a second copy of image 3's bytes, under another key


def picture(i: int) -> Image.Image:
    """A distinct smooth colour picture (an 8x8 random field, upsampled)."""
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A samples file made by the real image and hashes stages over N pictures plus one byte copy."""
    images = [jpeg(picture(i)) for i in range(N)] + [jpeg(picture(COPY_OF))]
    keys = [f"{i:03d}" for i in range(len(images))]
    table = pa.table(
        {
            "key": keys,
            "url": [f"http://h/{k}.jpg" for k in keys],
            "caption": ["a picture"] * len(keys),
            "status": ["success"] * len(keys),
            "image": images,
            "original_width": [160] * len(keys),
            "original_height": [120] * len(keys),
        }
    )
    samples = Hashes()(ImageSignals()(table)).drop_columns(["image"])
    path = tmp_path_factory.mktemp("pool") / "samples.parquet"
    pq.write_table(samples, path)
    return str(path), images


def listed_phash(i: int) -> int:
    small = Image.open(io.BytesIO(jpeg(picture(i)))).resize((80, 60))
    copy = Image.open(io.BytesIO(jpeg(small, quality=30)))
    return perceptual_hashes(copy, False)["phash"]


def expected() -> set[str]:
    return {f"{i:03d}" for i in EXACT + REENCODED} | {f"{N:03d}"}


def run_decide(tmp_path, samples: str, **params) -> tuple[dict, dict]:
    recipe = build_recipe({"annotate": ["image", "hashes"], "decide": [{"policy": "blocklist", **params}]})
    info: dict = {}
    counts = decide(samples, recipe.decide, tmp_path / "decisions", info=info)
    rows = pq.read_table(tmp_path / "decisions").to_pylist()
    return {r["key"]: r for r in rows}, {"counts": counts, "info": info}


def test_text_list_rejects_exact_and_reencoded_copies_and_nothing_else(tmp_path, pool):
    samples, images = pool
    lines = ["# partner list", *(f"sha256:{hashlib.sha256(images[i]).hexdigest()}" for i in EXACT)]
    lines += [f"{listed_phash(i):016x}  # re-encoded copy" for i in REENCODED]
    listed = tmp_path / "blocklist.txt"
    listed.write_text("\n".join(lines) + "\n\n")
    rows, out = run_decide(tmp_path, str(samples), path=str(listed))
    rejected = {k for k, r in rows.items() if not r["keep"]}
    assert rejected == expected()
    assert all(rows[k]["reason"] == "blocklisted" and rows[k]["dup_of"] is None for k in rejected)
    assert out["counts"] == {"blocklisted": len(expected())}
    (entry,) = out["info"]["blocklist"]
    assert entry["sha256"] == hashlib.sha256(listed.read_bytes()).hexdigest()
    assert (entry["sha256_entries"], entry["phash_entries"]) == (3, 3)


def test_parquet_list_and_match_choose_which_hashes_count(tmp_path, pool):
    samples, images = pool
    listed = tmp_path / "blocklist.parquet"
    pq.write_table(
        pa.table(
            {
                "sha256": [hashlib.sha256(images[i]).hexdigest().upper() for i in EXACT],
                "phash": pa.array([listed_phash(i) for i in REENCODED], pa.uint64()).cast(pa.int64(), safe=False),
            }
        ),
        listed,
    )
    rows, _ = run_decide(tmp_path, str(samples), path=str(listed))
    assert {k for k, r in rows.items() if not r["keep"]} == expected()
    rows, _ = run_decide(tmp_path, str(samples), path=str(listed), match=["sha256"])
    assert {k for k, r in rows.items() if not r["keep"]} == {f"{i:03d}" for i in EXACT} | {f"{N:03d}"}
    rows, _ = run_decide(tmp_path, str(samples), path=str(listed), k=0)  # re-encodes are not bit-identical
    assert {k for k, r in rows.items() if not r["keep"]} < expected()


def test_pigeonhole_bands_cover_64_bits():
    for k in range(17):
        layout = bands(k)
        assert len(layout) == k + 1 and sum(b for _, b in layout) == 64
        assert [s for s, _ in layout] == list(np.cumsum([0] + [b for _, b in layout[:-1]]))


def test_a_line_that_is_not_a_hash_names_file_and_line(tmp_path, pool):
    samples, _ = pool
    listed = tmp_path / "bad.txt"
    listed.write_text("# list\nnot-a-hash\n")
    with pytest.raises(BlocklistError, match=r"bad.txt, line 2: 'not-a-hash' is not a hash"):
        run_decide(tmp_path, samples, path=str(listed))
