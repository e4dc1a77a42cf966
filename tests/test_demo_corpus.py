"""Fast tests for the generated demo corpus and its loopback server (no Ray)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.demo.corpus import DEFECTS, build_corpus
from curate.demo.server import LoopbackServer, write_url_list

SLOW_S = 0.5


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(n_clean=60, seed=7, slow_delay_s=SLOW_S)


@pytest.fixture(scope="module")
def server(corpus):
    objects, _ = corpus
    with LoopbackServer(objects) as srv:
        yield srv


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_deterministic_for_seed():
    a = build_corpus(n_clean=20, seed=3, slow_delay_s=SLOW_S)
    b = build_corpus(n_clean=20, seed=3, slow_delay_s=SLOW_S)
    c = build_corpus(n_clean=20, seed=4, slow_delay_s=SLOW_S)
    assert a == b
    assert a[1] != c[1]


def test_clean_images_decode_and_are_distinct(corpus):
    objects, rows = corpus
    clean = [r for r in rows if r.defect is None]
    assert len(clean) == 60
    digests, pixels = set(), set()
    for r in clean:
        body = objects[r.path].body
        with Image.open(io.BytesIO(body)) as im:
            im.load()
            assert min(im.size) >= 160 and max(im.size) <= 512
            assert max(im.size) / min(im.size) <= 2.0
            pixels.add(hashlib.sha256(im.convert("RGB").tobytes()).hexdigest())
        digests.add(hashlib.sha256(body).hexdigest())
        assert r.expected_reason is None and " background" in r.caption
    assert len(digests) == len(pixels) == len(clean)
    assert {objects[r.path].content_type for r in clean} == {"image/jpeg", "image/png"}


def test_every_defect_kind_present(corpus):
    _, rows = corpus
    counts = Counter(r.defect for r in rows)
    assert set(DEFECTS) <= set(counts)
    assert counts["slow"] == 1
    assert all(counts[d] >= 3 for d in DEFECTS if d != "slow")
    expected = {"missing": "download_error", "slow": "download_timeout", "corrupt": "decode_error"}
    expected |= {"html": "decode_error", "tiny": "too_small", "duplicate": "dup_exact"}
    assert all(r.expected_reason == expected[r.defect] for r in rows if r.defect)
    assert len({r.path for r in rows}) == len(rows)


def test_defect_objects_look_right(corpus):
    objects, rows = corpus
    for r in rows:
        obj = objects.get(r.path)
        if r.defect == "missing":
            assert obj is None or obj.status == 404
        elif r.defect == "slow":
            assert obj.delay_s == SLOW_S
        elif r.defect in ("corrupt", "html"):
            assert obj.content_type == "image/jpeg" and r.path.endswith(".jpg")
            with pytest.raises(OSError), Image.open(io.BytesIO(obj.body)) as im:
                im.load()
        elif r.defect == "tiny":
            with Image.open(io.BytesIO(obj.body)) as im:
                assert min(im.size) >= 8 and max(im.size) <= 24


def test_duplicates_follow_a_kept_clean_original(corpus):
    objects, rows = corpus
    first_by_digest: dict[bytes, int] = {}
    for i, r in enumerate(rows):
        if r.path in objects and objects[r.path].status == 200:
            first_by_digest.setdefault(hashlib.sha256(objects[r.path].body).digest(), i)
    for i, r in enumerate(rows):
        if r.defect != "duplicate":
            continue
        j = first_by_digest[hashlib.sha256(objects[r.path].body).digest()]
        assert j < i
        orig = rows[j]
        assert orig.defect is None and orig.expected_reason is None
        assert objects[orig.path].body == objects[r.path].body
        assert orig.path != r.path and orig.caption != r.caption


def test_server_serves_bytes_and_404(corpus, server):
    objects, rows = corpus
    for r in rows[:30]:
        obj = objects.get(r.path)
        if r.defect == "slow":
            continue
        status, body = _get(server.url(r.path))
        if obj is None:
            assert status == 404
        else:
            assert (status, body) == (obj.status, obj.body)
    assert _get(server.url("/no/such/object.jpg"))[0] == 404
    assert server.base_url.startswith("http://127.0.0.1:")


def test_slow_object_takes_its_delay(corpus, server):
    _, rows = corpus
    slow = next(r for r in rows if r.defect == "slow")
    t0 = time.monotonic()
    status, _ = _get(server.url(slow.path))
    assert status == 200 and time.monotonic() - t0 >= SLOW_S


def test_stop_is_prompt_during_slow_request():
    objects, rows = build_corpus(n_clean=5, seed=1, slow_delay_s=30.0)
    slow = next(r for r in rows if r.defect == "slow")
    srv = LoopbackServer(objects).start()
    client = threading.Thread(target=lambda: _safe_get(srv.url(slow.path)), daemon=True)
    client.start()
    time.sleep(0.2)  # let the request reach the handler's sleep
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 2.0


def _safe_get(url: str) -> None:
    with contextlib.suppress(OSError):
        _get(url, timeout=10)


def test_write_url_list_round_trips(corpus, tmp_path):
    _, rows = corpus
    out = write_url_list(rows, "http://127.0.0.1:1234", tmp_path / "sub" / "urls.parquet")
    table = pq.read_table(out)
    assert table.column_names == ["url", "caption", "defect", "expected_reason"]
    data = table.to_pylist()
    assert [d["url"] for d in data] == ["http://127.0.0.1:1234" + r.path for r in rows]
    assert [d["caption"] for d in data] == [r.caption for r in rows]
    assert [d["defect"] for d in data] == [r.defect for r in rows]
    assert [d["expected_reason"] for d in data] == [r.expected_reason for r in rows]
