"""URL lists as img2dataset takes them: every format, compression and way of naming files reads the same rows."""

from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zstandard

from curate.recipe import load_recipe
from curate.urls import InputError, read_inputs, read_url_list

ROWS = [
    {"url": f"http://127.0.0.1/{i}.jpg", "caption": caption}
    for i, caption in enumerate(
        ["a cat, sitting", 'a "quoted" dog', "ünïcødé 猫", "", "plain", "tab-free text", "12 inch ruler"]
    )
]
SPLITS = [(0, 3), (3, 5), (5, 7)]
"""Row ranges of the three part files of a folder, glob or list."""

COMPRESS = {"": lambda b: b, ".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress, ".bz2": bz2.compress}
FORMATS = ("parquet", "csv", "tsv", "json", "jsonl", "txt")
DEMO = load_recipe("demo").input


def encode(rows: list[dict], fmt: str) -> bytes:
    """``rows`` as a list file of format ``fmt``, written with real writers (pyarrow, json)."""
    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, sink)
    elif fmt in ("csv", "tsv"):
        pacsv.write_csv(table, sink, pacsv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
    elif fmt == "json":
        return json.dumps(rows).encode()
    elif fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    else:  # txt: URLs only, with a blank line and CRLF endings thrown in
        return "\r\n".join(r["url"] + ("\n" if i == 1 else "") for i, r in enumerate(rows)).encode() + b"\n"
    return sink.getvalue().to_pybytes()


def write_parts(folder: Path, fmt: str, compression: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (start, stop) in enumerate(SPLITS):
        path = folder / f"part-{n}.{fmt}{compression}"
        path.write_bytes(COMPRESS[compression](encode(ROWS[start:stop], fmt)))
        paths.append(path)
    return paths


def expected(fmt: str) -> pa.Table:
    """What the plain Parquet list of all rows reads as (captions empty for a .txt list)."""
    rows = [{**r, "caption": "" if fmt == "txt" else r["caption"]} for r in ROWS]
    return pa.Table.from_pylist(rows)


def read_rows(spec, cfg=DEMO, **kwargs) -> pa.Table:
    return read_inputs(spec, cfg, 100, **kwargs).select(["url", "caption"])


def test_the_plain_parquet_list_is_the_reference(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    table = read_inputs(path, DEMO, 3)
    assert table.select(["url", "caption"]).equals(expected("parquet"))
    assert table.column("key").to_pylist()[:4] == ["000000", "000001", "000002", "000010"]
    assert table.column("raw_shard").to_pylist() == ["00000"] * 3 + ["00001"] * 3 + ["00002"]


@pytest.mark.parametrize("compression", list(COMPRESS))
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", ["file", "folder", "glob", "list"])
def test_every_format_compression_and_layout_reads_the_same_rows(tmp_path, fmt, compression, layout):
    if layout == "file":
        path = tmp_path / f"urls.{fmt}{compression}"
        path.write_bytes(COMPRESS[compression](encode(ROWS, fmt)))
        spec = str(path)
    else:
        parts = write_parts(tmp_path / "lists", fmt, compression)
        (tmp_path / "lists" / "_SUCCESS").write_text("")  # not a list file: skipped in a folder
        (tmp_path / "lists" / "README.md").write_text("")
        spec = {"folder": tmp_path / "lists", "glob": f"{tmp_path}/lists/*.{fmt}{compression}", "list": parts}[layout]
    assert read_rows(spec).equals(expected(fmt))


def test_a_list_keeps_its_order_and_mixes_formats(tmp_path):
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(encode(ROWS[:3], "csv")))
    (tmp_path / "a.txt").write_bytes(encode(ROWS[3:5], "txt"))
    pq.write_table(pa.Table.from_pylist(ROWS[5:]), tmp_path / "c.parquet")
    table = read_rows([tmp_path / "b.csv.gz", tmp_path / "a.txt", tmp_path / "c.parquet"])
    assert table.column("url").to_pylist() == [r["url"] for r in ROWS]
    assert table.column("caption").to_pylist() == [r["caption"] for r in ROWS[:3]] + ["", ""] + [
        "tab-free text",
        "12 inch ruler",
    ]


def test_a_folder_is_read_in_sorted_order(tmp_path):
    for name, (start, stop) in zip(["b", "a", "c"], SPLITS, strict=True):
        pq.write_table(pa.Table.from_pylist(ROWS[start:stop]), tmp_path / f"{name}.parquet")
    urls = read_rows(tmp_path).column("url").to_pylist()
    assert urls == [r["url"] for r in ROWS[3:5] + ROWS[:3] + ROWS[5:]]


def test_a_file_named_like_a_pattern_is_that_file(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "urls[1].parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[:1]), tmp_path / "urls1.parquet")
    assert len(read_rows(tmp_path / "urls[1].parquet")) == len(ROWS)


def test_url_only_lists_have_empty_captions(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"link": [r["url"] for r in ROWS]}), path)
    recipe = load_recipe("demo", ["input.caption_col=null", "input.url_col=link"])
    assert recipe.to_dict()["input"]["caption_col"] is None
    table = read_inputs(path, recipe.input, 100)
    assert table.column("caption").to_pylist() == [""] * len(ROWS)
    assert table.column("url").to_pylist() == [r["url"] for r in ROWS]
    txt = tmp_path / "urls.txt"
    txt.write_bytes(encode(ROWS, "txt"))
    assert read_inputs(txt, recipe.input, 100).column("url").to_pylist() == [r["url"] for r in ROWS]


def test_extra_columns_are_read_only_when_asked(tmp_path):
    path = tmp_path / "urls.csv.zst"
    rows = [{**r, "source": f"s{i}", "unused": i} for i, r in enumerate(ROWS)]
    path.write_bytes(zstandard.ZstdCompressor().compress(encode(rows, "csv")))
    cfg = load_recipe("demo", ["input.save_additional_columns=[source]"]).input
    table = read_inputs(path, cfg, 100)
    assert "unused" not in table.column_names and table.column("source").to_pylist()[:2] == ["s0", "s1"]
    assert read_url_list(path, ["url"]).column_names == ["url"]


def test_a_csv_column_whose_type_changes_after_the_first_block(tmp_path):
    path = tmp_path / "urls.csv.gz"
    lines = "".join(f"http://127.0.0.1/{i}.jpg,{i}\n" for i in range(200_000))
    path.write_bytes(gzip.compress(f"url,caption\n{lines}http://127.0.0.1/x.jpg,a cat\n".encode()))
    captions = read_rows(path).column("caption")
    assert len(captions) == 200_001 and captions[0].as_py() == "0" and captions[-1].as_py() == "a cat"


def test_jsonl_columns_that_change_after_the_first_block(tmp_path):
    first = "".join(
        json.dumps({"url": f"http://127.0.0.1/{i}.jpg", "caption": None, "n": i}) + "\n" for i in range(40_000)
    )
    later = json.dumps({"url": "http://127.0.0.1/x.jpg", "caption": "a cat", "n": 0.5, "source": "s"}) + "\n"
    (tmp_path / "urls.jsonl").write_text(first + later)
    cfg = load_recipe("demo", ["input.save_additional_columns=[n, source]"]).input
    table = read_inputs(tmp_path / "urls.jsonl", cfg, 100)
    assert table.column("caption")[-1].as_py() == "a cat" and table.column("n")[-1].as_py() == 0.5
    assert table.column("source").null_count == 40_000
    only_n = load_recipe("demo", ["input.save_additional_columns=[n]"]).input  # n: int64 in the first block
    assert read_inputs(tmp_path / "urls.jsonl", only_n, 100).column("n")[-1].as_py() == 0.5


def test_invalid_utf8_is_repaired_in_every_reader(tmp_path):
    (tmp_path / "urls.csv").write_bytes(b"url,caption\nhttp://127.0.0.1/0.jpg,caf\xe9\n")
    (tmp_path / "urls.txt").write_bytes(b"http://127.0.0.1/caf\xe9.jpg\n")
    assert read_rows(tmp_path / "urls.csv").column("caption").to_pylist() == ["caf\ufffd"]
    assert read_rows(tmp_path / "urls.txt").column("url").to_pylist() == ["http://127.0.0.1/caf\ufffd.jpg"]


# --- remote lists ---------------------------------------------------------------------------------


def test_memory_filesystem_file_folder_and_glob():
    fs = fsspec.filesystem("memory")
    for n, (start, stop) in enumerate(SPLITS):
        fs.pipe(f"/curate-lists/part-{n}.jsonl.gz", gzip.compress(encode(ROWS[start:stop], "jsonl")))
    try:
        assert read_rows("memory://curate-lists").equals(expected("jsonl"))
        assert read_rows("memory://curate-lists/*.jsonl.gz").equals(expected("jsonl"))
        assert len(read_rows("memory://curate-lists/part-1.jsonl.gz")) == 2
    finally:
        fs.rm("/curate-lists", recursive=True)


@contextlib.contextmanager
def serve(folder: Path):
    """A loopback HTTP server for the files in ``folder``."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", ["urls.parquet", "urls.csv.zst", "urls.txt.gz"])
def test_a_list_served_over_http(tmp_path, name):
    fmt, _, compression = name.removeprefix("urls.").partition(".")
    (tmp_path / name).write_bytes(COMPRESS["." + compression if compression else ""](encode(ROWS, fmt)))
    with serve(tmp_path) as base:
        assert read_rows(f"{base}/{name}").equals(expected(fmt))
        with pytest.raises(InputError, match="no such file"):
            read_rows(f"{base}/missing.csv")


@pytest.fixture
def s3_bucket(monkeypatch):
    """A bucket on moto's S3 server on loopback, reached through the standard AWS environment variables."""
    moto_server = pytest.importorskip("moto.server")
    from s3fs import S3FileSystem

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    S3FileSystem.clear_instance_cache()  # a filesystem cached for another server must not be reused
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("curate-lists")
    try:
        yield "curate-lists"
    finally:
        S3FileSystem.clear_instance_cache()
        server.stop()


def test_lists_in_an_s3_bucket(s3_bucket):
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for n, (start, stop) in enumerate(SPLITS):
        fs.pipe(f"{s3_bucket}/urls/part-{n}.parquet", encode(ROWS[start:stop], "parquet"))
    fs.pipe(f"{s3_bucket}/one.tsv.gz", gzip.compress(encode(ROWS, "tsv")))
    fs.invalidate_cache()
    assert read_rows(f"s3://{s3_bucket}/urls/").equals(expected("parquet"))
    assert read_rows(f"s3://{s3_bucket}/urls/*.parquet").equals(expected("parquet"))
    assert read_rows(f"s3://{s3_bucket}/one.tsv.gz").equals(expected("tsv"))
    with pytest.raises(InputError, match=r"s3://curate-lists/urls/\*.csv: the pattern matches no file"):
        read_rows(f"s3://{s3_bucket}/urls/*.csv")


# --- refusals, before anything starts --------------------------------------------------------------


def refused(spec, match: str, cfg=DEMO) -> None:
    start = time.monotonic()
    with pytest.raises(InputError, match=match) as info:
        read_inputs(spec, cfg, 100)
    assert "\n" not in str(info.value)
    assert time.monotonic() - start < 5  # coarse: a refusal reads at most a header


def test_unknown_extension(tmp_path):
    (tmp_path / "urls.xlsx").write_bytes(b"PK")
    refused(tmp_path / "urls.xlsx", r"urls.xlsx: unknown extension '.xlsx'; use .parquet, .csv")
    (tmp_path / "urls.csv.lz4").write_bytes(b"x")
    refused(tmp_path / "urls.csv.lz4", r"urls.csv.lz4: unknown extension '.lz4'")
    refused(f"{tmp_path}/*.xlsx", r"urls.xlsx: unknown extension")  # a glob names its files explicitly


def test_missing_column_names_the_file(tmp_path):
    write_parts(tmp_path / "lists", "csv", ".gz")
    (tmp_path / "lists" / "part-1.csv.gz").write_bytes(gzip.compress(b"URL,caption\nhttp://127.0.0.1/x.jpg,x\n"))
    refused(tmp_path / "lists", r"part-1.csv.gz: no column 'url' \(columns: URL, caption\).*input.url_col")
    cfg = load_recipe("demo", ["input.save_additional_columns=[source]"]).input
    (tmp_path / "urls.txt").write_bytes(encode(ROWS, "txt"))
    refused(tmp_path / "urls.txt", r"urls.txt: no column 'source'", cfg)
    (tmp_path / "urls.json").write_text(json.dumps([{"link": "x"}]))
    refused(tmp_path / "urls.json", r"urls.json: no column 'url' \(columns: link\)")


@pytest.mark.parametrize("name", ["urls.csv.gz", "urls.parquet.zst", "urls.jsonl.bz2", "urls.txt.gz"])
def test_unreadable_compression(tmp_path, name):
    (tmp_path / name).write_bytes(b"url,caption\nhttp://127.0.0.1/x.jpg,not compressed at all\n")
    refused(tmp_path / name, rf"{name}: cannot be read as (gzip|zstd|bz2)-compressed .*Check the file")


def test_unreadable_content(tmp_path):
    (tmp_path / "urls.parquet").write_bytes(b"not parquet")
    refused(tmp_path / "urls.parquet", r"urls.parquet: cannot be read as parquet")
    (tmp_path / "urls.json").write_text('["http://127.0.0.1/a.jpg"]')
    refused(tmp_path / "urls.json", r"urls.json: a JSON list must be an array of objects")


def test_values_that_are_not_text(tmp_path):
    (tmp_path / "urls.jsonl").write_text('{"url": "http://127.0.0.1/a.jpg", "caption": {"en": "a cat"}}\n')
    refused(tmp_path / "urls.jsonl", r"urls.jsonl: column 'caption' holds struct.*not text")
    (tmp_path / "urls.json").write_text(
        '[{"url": "http://127.0.0.1/a.jpg", "caption": 1}, {"url": "b", "caption": "x"}]'
    )
    refused(tmp_path / "urls.json", r"urls.json: cannot be read as json")
    cfg = load_recipe("demo", ["input.save_additional_columns=[n]"]).input
    (tmp_path / "a.csv").write_text("url,caption,n\nhttp://127.0.0.1/a.jpg,x,1\n")
    (tmp_path / "b.csv").write_text("url,caption,n\nhttp://127.0.0.1/b.jpg,x,one\n")
    refused(
        [tmp_path / "a.csv", tmp_path / "b.csv"], r"a.csv, .*b.csv: the list files disagree on a column's type", cfg
    )


def test_no_rows(tmp_path):
    (tmp_path / "urls.txt").write_text("\n\n  \n")
    refused(tmp_path / "urls.txt", r"no rows .*nothing to curate")
    (tmp_path / "urls.csv.gz").write_bytes(gzip.compress(b"url,caption\n"))
    refused(tmp_path / "urls.csv.gz", r"no rows .*nothing to curate")
    (tmp_path / "urls.json").write_text("[]")
    refused(tmp_path / "urls.json", r"no rows .*nothing to curate")


def test_nothing_matches(tmp_path):
    refused(f"{tmp_path}/*.parquet", r"\*.parquet: the pattern matches no file")
    refused(tmp_path / "missing.csv", r"missing.csv: no such file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("")
    refused(tmp_path / "empty", r"empty: a folder without URL list files")
    refused([], r"no URL list given")


def test_unclosed_quote_in_a_compressed_csv_names_the_line(tmp_path):
    data = b'url,caption\nhttp://a/0.jpg,ok\nhttp://a/1.jpg,"a cat\nhttp://a/2.jpg,a dog\n'
    (tmp_path / "urls.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    refused(tmp_path / "urls.csv.zst", r"urls.csv.zst: line 3: a quoted value is not closed")


@pytest.mark.parametrize("inputs", [["urls.xlsx"], ["ok.csv", "urls.xlsx"]])
def test_wrong_extension_exits_2_before_ray_starts(tmp_path, inputs):
    (tmp_path / "urls.xlsx").write_bytes(b"PK")
    (tmp_path / "ok.csv").write_bytes(encode(ROWS, "csv"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "curate", "run", "demo", "--output", str(tmp_path / "run")]
    for name in inputs:  # several lists: --input repeated
        cmd += ["--input", str(tmp_path / name)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert "urls.xlsx: unknown extension '.xlsx'" in proc.stderr and proc.stderr.count("\n") == 1
    assert took < 10, f"took {took:.1f} s"  # today's main: 15-27 s, after Ray has started
    assert not (tmp_path / "run" / "input").exists()


# --- a whole run over a URL-only list ---------------------------------------------------------------


@pytest.mark.slow
def test_a_txt_list_runs_through_the_demo_recipe(served_corpus, ray_session, tmp_path):
    """Empty captions flow through the caption and language stages, decide and emit; every row gets a reason."""
    import webdataset as wds

    from curate import reasons
    from curate.recipe import build_recipe
    from curate.run import run_pipeline

    urls = pq.read_table(served_corpus.urls).column("url").to_pylist()[:60]
    listing = tmp_path / "urls.txt.gz"
    listing.write_bytes(gzip.compress("\n".join(urls).encode()))
    run_dir = tmp_path / "run"
    demo = load_recipe("demo", ["acquire.samples_per_shard=30"])
    result = run_pipeline(demo, listing, run_dir)
    rows = pq.read_table(run_dir / "decisions").to_pylist()
    assert sorted(r["url"] for r in rows) == sorted(urls) and result.funnel["steps"]["input"] == len(urls)
    assert not any(r["keep"] for r in rows)  # the demo recipe asks for an English caption of 1+ characters
    assert {r["reason"] for r in rows} <= set(reasons.REASONS) and "caption_short" in {r["reason"] for r in rows}

    data = demo.to_dict()  # the same run without the caption policies: images alone decide
    data["decide"] = [
        p for p in data["decide"] if p["policy"] not in ("caption_length", "caption_boilerplate", "language")
    ]
    run_pipeline(build_recipe(data, "url-only"), listing, run_dir)
    kept = [r for r in pq.read_table(run_dir / "decisions").to_pylist() if r["keep"]]
    assert kept
    samples = list(wds.WebDataset(sorted(map(str, (run_dir / "shards").glob("*.tar"))), shardshuffle=False))
    assert len(samples) == len(kept) and {s["txt"] for s in samples} == {b""}
    assert set(pq.read_table(run_dir / "metadata").column("caption").to_pylist()) == {""}
    assert json.loads((run_dir / "llava" / "pretrain.json").read_text())
