"""Not in `make test` (it needs apt fonts and npm packs; run `bash benchmarks/quality_setup.sh` then
`.venv/bin/pytest benchmarks/test_quality_corpus.py`). The quality corpus (curate/demo/emoji_corpus.py): real pairs, planted noise, truth kept, served on loopback.

Builds a 60-row pool (no training, no Ray). Needs Debian's fonts-noto-color-emoji, npm's openmoji
and the PyPI packages emoji and cairosvg; installs the first two when running as root (the
catalogue is cached in ~/.cache/curate/quality-corpus), and skips with the fix otherwise.
"""

from __future__ import annotations

import io
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package

N, SEED = 60, 11
BROKEN = ("missing", "corrupt", "html")


@pytest.fixture(scope="module")
def qc():
    pytest.importorskip("emoji", reason="pip install emoji (the bench extra)")
    pytest.importorskip("cairosvg", reason="pip install cairosvg (the bench extra)")
    from curate.demo import emoji_corpus as quality_corpus
    from curate.demo import emoji_sources as quality_sources

    try:
        quality_sources.ensure_sources(install=True)
    except quality_sources.SourceUnavailable as err:
        pytest.skip(f"quality corpus sources unavailable: {err}")
    return quality_corpus


@pytest.fixture(scope="module")
def corpus(qc, tmp_path_factory):
    return qc.build_quality_corpus(tmp_path_factory.mktemp("quality"), n=N, seed=SEED, cache=_sources_cache())


def _sources_cache() -> Path:
    from curate.demo.emoji_sources import default_cache

    return default_cache()


def _decode(body: bytes) -> Image.Image:
    with Image.open(io.BytesIO(body)) as im:
        im.load()
        return im.convert("RGB")


def test_every_row_has_truth_and_the_planted_counts(qc, corpus):
    _, rows = corpus
    assert len(rows) == N and len({r.path for r in rows}) == N
    assert Counter(r.defect or "clean" for r in rows) == qc.noise_counts(N)
    for r in rows:
        assert r.expected_reason == (qc.NOISE[r.defect][1] if r.defect else None)
        assert r.source in ("noto", "openmoji") and r.concept and r.caption
        assert (r.dup_of is not None) == (r.defect in ("dup_exact", "dup_near"))
    assert {r.source for r in rows} == {"noto", "openmoji"}


def test_images_decode_with_the_planted_geometry(corpus):
    objects, rows = corpus
    for r in rows:
        if r.defect in BROKEN:
            continue
        w, h = _decode(objects[r.path].body).size
        if r.defect == "tiny":
            assert min(w, h) < 200
        elif r.defect == "extreme_aspect":
            assert min(w, h) >= 200 and max(w, h) > 3 * min(w, h)
        else:
            assert min(w, h) >= 200 and max(w, h) <= 3 * min(w, h), (r, w, h)


def test_broken_rows_are_broken(corpus):
    objects, rows = corpus
    for r in rows:
        if r.defect == "missing":
            assert r.path not in objects or objects[r.path].status == 404
        elif r.defect in ("corrupt", "html"):
            with pytest.raises(Exception):  # noqa: B017 - Pillow raises several types
                _decode(objects[r.path].body)
            assert r.defect != "html" or objects[r.path].body.lstrip().startswith(b"<!DOCTYPE html>")


def test_duplicates_relate_to_their_originals_as_stated(corpus):
    objects, rows = corpus
    by_path = {r.path: r for r in rows}
    order = {r.path: i for i, r in enumerate(rows)}
    for r in rows:
        if not r.dup_of:
            continue
        orig = by_path[r.dup_of]
        assert orig.defect is None and order[orig.path] < order[r.path]  # a clean row, earlier in the list
        if r.defect == "dup_exact":
            assert objects[r.path].body == objects[orig.path].body
            continue
        a, b = _decode(objects[orig.path].body), _decode(objects[r.path].body)
        assert objects[r.path].body != objects[orig.path].body
        if r.detail in ("resize", "resize_jpeg"):
            assert b.width <= a.width and abs(b.width / a.width - b.height / a.height) < 0.01
        elif r.detail == "crop":
            assert a.width * 0.96 <= b.width < a.width and a.height * 0.96 <= b.height < a.height
        else:
            assert b.size == a.size
        diff = np.abs(np.asarray(a.resize(b.size), np.float32) - np.asarray(b, np.float32)).mean()
        assert diff < 25, (r.detail, diff)  # the same picture, slightly changed


def test_noisy_captions_are_what_they_claim(qc, corpus):
    _, rows = corpus
    for r in rows:
        if r.defect == "mismatched":
            assert r.detail.startswith("caption of ") and r.detail != f"caption of {r.concept}"
        elif r.defect == "non_english":
            assert r.detail in qc.LOCAL_TEMPLATES
        elif r.defect == "boilerplate":
            assert r.detail in qc.BOILERPLATE


def test_the_same_seed_builds_the_same_pool(qc, corpus, tmp_path):
    again = qc.build_quality_corpus(tmp_path, n=N, seed=SEED, cache=_sources_cache())
    assert again == corpus
    assert qc.build_quality_corpus(tmp_path, n=N, seed=SEED, cache=_sources_cache()) == corpus  # read back


def test_seed_artists_draw_the_same_emoji_under_the_same_names(qc):
    from curate.demo.emoji_sources import SOURCES, SourceUnavailable, ensure_sources, iconify_pairs, load_catalogue

    try:
        ensure_sources(("twemoji",), _sources_cache())
    except SourceUnavailable as err:
        pytest.skip(f"seed sources unavailable: {err}")
    seed = iconify_pairs("twemoji", _sources_cache())  # names only: no glyph is drawn
    noto = {p.concept: p.name for p in load_catalogue(SOURCES, _sources_cache()) if p.source == "noto"}
    shared = [p for p in seed if p.concept in noto]
    assert len(seed) > 1500 and len(shared) > 0.8 * len(seed)
    assert all(p.name == noto[p.concept] for p in shared)  # the same CLDR name as the pool's glyph


def test_pool_and_seed_holdout_share_no_glyph(qc):
    from curate.demo.emoji_sources import SOURCES, load_catalogue

    pairs = load_catalogue(SOURCES, _sources_cache())
    pool, held = qc.split_glyphs(pairs, 0, qc.HOLDOUT)
    assert abs(len(held) / len(pairs) - qc.HOLDOUT) < 0.03
    assert not {(p.source, p.ident) for p in pool} & {(p.source, p.ident) for p in held}


def test_served_on_loopback_as_planted(qc, corpus, tmp_path):
    from curate.demo.server import LoopbackServer

    objects, rows = corpus
    with LoopbackServer(objects) as server:
        urls = pq.read_table(qc.write_truth(rows, server.base_url, tmp_path / "urls.parquet")).to_pylist()
        assert [u["url"] for u in urls] == [server.url(r.path) for r in rows]
        assert [u["defect"] for u in urls] == [r.defect for r in rows]
        for r in rows:
            status, body = _get(server.url(r.path))
            if r.defect == "missing":
                assert status == 404
            else:
                assert (status, body) == (200, objects[r.path].body)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_icons_corpus_has_no_emoji_and_real_translated_flags(qc, tmp_path):
    """The second corpus: flags, logos and flat-color icons; its non-English rows are flags named in
    the iso-codes translation of the country, in that language's flag template."""
    pytest.importorskip("pycountry", reason="pip install pycountry (the icons corpus's country names)")
    from curate.demo.emoji_sources import CORPORA, SourceUnavailable, ensure_sources

    try:
        ensure_sources(CORPORA["icons"], _sources_cache())
    except SourceUnavailable as err:
        pytest.skip(f"icons corpus sources unavailable: {err}")
    _, rows = qc.build_quality_corpus(tmp_path, n=N, seed=SEED, cache=_sources_cache(), corpus="icons")
    assert len(rows) == N and {r.source for r in rows} <= set(CORPORA["icons"])
    foreign = [r for r in rows if r.defect == "non_english"]
    assert foreign and all(r.source == "flag" for r in foreign)
    assert all(any(r.caption.startswith(t.split("{")[0]) for t in qc.ICON_LOCAL_TEMPLATES[r.detail]) for r in foreign)
    germany = next(p for p in qc.load_catalogue(CORPORA["icons"], _sources_cache()) if p.concept == "flag:DE")
    assert germany.name == "flag of Germany" and germany.translations["de"] == "Deutschland"
