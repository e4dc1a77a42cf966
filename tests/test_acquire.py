"""The acquire shard worker and URL lists, without Ray, against the loopback server."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.acquire.download import AcquireConfig, ShardLayout, complete_shards, download_shard
from curate.acquire.inputs import download_rows, prepare_inputs, read_url_list
from curate.acquire.raw import read_shard
from curate.acquire.staging import stage_table
from curate.recipe import load_recipe

LOOPBACK = AcquireConfig(allow_private_addresses=True)  # the test server is on 127.0.0.1


def clean_rows(corpus, n):
    return [r for r in corpus.rows if r.defect is None][:n]


def stage_run(tmp_path, corpus, rows, extra_urls=()):
    """A run dir with input/{shard}.parquet for ``rows`` (+ raw URLs), as `curate run` writes it."""
    urls = [corpus.server.url(r.path) for r in rows] + list(extra_urls)
    table = pa.table({"url": urls, "caption": [f"caption {i}" for i in range(len(urls))]})
    inputs = prepare_inputs(table, load_recipe("demo").input, 10, "test")
    layout = ShardLayout(len(inputs), 10)
    stage_table(inputs, layout, str(tmp_path / "input"))
    (tmp_path / "raw").mkdir()
    return inputs, layout


def test_original_bytes_are_kept_and_unfetchable_urls_never_requested(served_corpus, tmp_path):
    rows = clean_rows(served_corpus, 7)
    inputs, layout = stage_run(tmp_path, served_corpus, rows, ["file:///etc/passwd", "ftp://x/y.jpg", ""])
    stats = download_shard(0, download_rows(inputs, layout, 0, []), str(tmp_path / "raw"), layout, LOOPBACK)
    assert stats["count"] == 10 and stats["successes"] == 7
    assert complete_shards(tmp_path / "raw") == {"00000"}
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")]  # temp folder gone
    table = pa.concat_tables(read_shard(str(tmp_path), "00000"))
    got = table.to_pylist()
    assert [r["key"] for r in got] == [f"00000{i}" for i in range(10)]
    for row, demo in zip(got[:7], rows, strict=True):
        assert row["status"] == "success"
        assert row["image"] == served_corpus.objects[demo.path].body  # byte-identical
        with open(tmp_path / "raw" / "00000.tar", "rb") as f:  # offsets point at the bytes
            f.seek(row["image_offset"])
            assert f.read(row["image_size"]) == row["image"]
    assert [r["status"] for r in got[7:]] == ["bad_url"] * 3
    assert all(r["image"] is None for r in got[7:])


def test_max_side_downscales_large_images_only(served_corpus, tmp_path):
    def size(row):
        return Image.open(io.BytesIO(served_corpus.objects[row.path].body)).size

    candidates = [r for r in served_corpus.rows if r.defect is None]
    rows = [r for r in candidates if max(size(r)) > 300][:5] + [r for r in candidates if max(size(r)) <= 300][:5]
    assert len(rows) == 10
    inputs, layout = stage_run(tmp_path, served_corpus, rows)
    download_shard(
        0,
        download_rows(inputs, layout, 0, []),
        str(tmp_path / "raw"),
        layout,
        AcquireConfig(max_side=300, allow_private_addresses=True),
    )
    got = pa.concat_tables(read_shard(str(tmp_path), "00000")).to_pylist()
    for row, demo in zip(got, rows, strict=True):
        before, after = size(demo), Image.open(io.BytesIO(row["image"])).size
        if max(before) <= 300:
            assert after == before  # never upscaled or padded
        else:
            assert max(after) == 300 and abs(after[0] / after[1] - before[0] / before[1]) < 0.02


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_url_lists_in_every_format(tmp_path, suffix):
    rows = [
        {"url": "http://127.0.0.1/a.jpg", "caption": "a cat, sitting"},
        {"url": "x", "caption": "b"},
    ]
    path = tmp_path / f"urls{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text("url" + sep + "caption\n" + "".join(f'{r["url"]}{sep}"{r["caption"]}"\n' for r in rows))
    table = prepare_inputs(read_url_list(path), load_recipe("demo").input, 100, str(path))
    assert table.column("caption").to_pylist() == ["a cat, sitting", "b"]
    assert table.column("fetchable").to_pylist() == [True, False]


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("members", [{}, {"b.jpg": b"BB", "a.jpg": b"A", "a.json": b"{}", "c.jpg": b""}])
def test_image_bytes_are_cut_from_the_tar_in_key_order_with_nulls_for_rows_without_one(tmp_path, members):
    from curate.acquire.raw import _join_images, _tar_images, _tar_index

    path = tmp_path / "00000.tar"
    path.write_bytes(_tar_bytes(members))
    rows = pa.table({"key": ["c", "x", "b", "a"]})
    index, data = _tar_index(str(path))
    got = _join_images(rows, index, data)
    expected = {"a": b"A", "b": b"BB", "c": b""} if members else {}
    assert got.column("key").to_pylist() == ["a", "b", "c", "x"]
    assert got.column("image").to_pylist() == [expected.get(k) for k in ["a", "b", "c", "x"]]
    assert _tar_images(str(path)).column("image").to_pylist() == [members[f"{k}.jpg"] for k in index["key"].to_pylist()]


def _tar_of(format: int, members: dict[str, bytes], mtime: float = 0, pax: dict[str, str] | None = None) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.pax_headers = len(data), mtime, pax or {}
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _damaged(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


LONG = "d/" * 60 + "k.jpg"  # over 100 characters: a ustar prefix, a pax path or a GNU long name


def _tar_cases() -> dict[str, tuple[bytes, bool]]:
    """Tars and whether the fast header parser reads them itself (else it hands them to tarfile)."""
    import tarfile

    members = {"00/a.jpg": b"A" * 700, "00/a.txt": b"cap", "b.jpg": b"", "ü.jpg": b"u", "c.jpg": b"C" * 512}
    ustar = _tar_of(tarfile.USTAR_FORMAT, {**members, "p/" * 55 + "k.jpg": b"K"})
    pax = _tar_of(tarfile.PAX_FORMAT, {**members, LONG: b"L"}, mtime=1795991369.25)  # what img2dataset writes
    return {
        "ustar": (ustar, True),
        "pax": (pax, True),
        "gnu": (_tar_of(tarfile.GNU_FORMAT, {**members, LONG: b"L"}), False),
        "pax size not a number": (_tar_of(tarfile.PAX_FORMAT, members, pax={"size": "many"}), False),
        "pax size negative": (_tar_of(tarfile.PAX_FORMAT, members, pax={"size": "-700"}), False),
        "bad checksum": (_damaged(ustar, 10), False),
        "truncated": (ustar[: len(ustar) // 2], False),
        "empty": (b"", False),
        "no end block": (ustar[: 512 * 4], False),
    }


@pytest.mark.parametrize("case", list(_tar_cases()))
def test_the_fast_tar_header_parser_reads_what_tarfile_reads_or_hands_the_tar_to_it(case):
    from curate.acquire.raw import _plain_tar_files, _tarfile_files

    data, fast = _tar_cases()[case]
    got = _plain_tar_files(data)
    assert (got is not None) == fast
    if got is not None:  # else tarfile reads it, errors and all
        assert got == list(_tarfile_files(data))
        assert [data[o : o + n] for _, o, n in got][:2] == [b"A" * 700, b"cap"]
