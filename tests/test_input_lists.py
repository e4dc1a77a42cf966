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

from curate.acquire.inputs import InputError, read_inputs, read_url_list
from curate.recipe import load_recipe

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


# --- staging: per-shard input files, keys, the distributed path (issue 17) ----------------------------------


def local_tasks(fn, calls, desc, num_cpus=1.0):
    """:func:`curate.runtime.run_tasks` without Ray: each call in this process."""
    return [(fn(*args), "local") for args in calls]


@pytest.mark.parametrize("rows,per", [(1, 1), (25, 10), (1000, 1), (3, 10_000), (123_457, 10_000), (101, 7)])
def test_vectorised_keys_are_the_old_scheme(rows, per):
    from curate.acquire.download import ShardLayout

    layout = ShardLayout(rows, per)
    width, scale = layout.shard_digits + layout.sample_digits, 10**layout.sample_digits
    old = [f"{(i // per) * scale + i % per:0{width}d}" for i in range(rows)]  # the per-row Python scheme
    assert layout.keys().to_pylist() == old
    assert layout.keys(rows // 2, rows).to_pylist() == old[rows // 2 :]


def mixed_lists(folder: Path) -> list[Path]:
    """Three list files of different formats whose extra column is int32 in one and int64 in another."""
    folder.mkdir()
    rows = [{**r, "n": i} for i, r in enumerate(ROWS * 3)]  # 21 rows
    parts = [(0, 8, "parquet"), (8, 9, "csv"), (9, 21, "jsonl")]
    paths = []
    for i, (start, stop, fmt) in enumerate(parts):
        path = folder / f"part-{i}.{fmt}"
        if fmt == "parquet":
            table = pa.Table.from_pylist(rows[start:stop])
            pq.write_table(table.set_column(2, "n", table.column("n").cast(pa.int32())), path)
        else:
            path.write_bytes(encode(rows[start:stop], fmt))
        paths.append(path)
    return paths


def stage(spec, run_dir: Path, max_bytes: int, run_tasks=local_tasks, per: int = 4, manifest: dict | None = None):
    from curate.acquire import staging

    cfg = DEMO.model_copy(update={"save_additional_columns": ["n"], "driver_max_bytes": max_bytes})
    run_dir.mkdir(exist_ok=True)
    manifest = {} if manifest is None else manifest
    layout, staged = staging.stage_urls(spec, cfg, per, str(run_dir), manifest, run_tasks)
    staging.check_fingerprint(str(run_dir), manifest, staged)
    return layout, staged, manifest


def input_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "input").iterdir())}


@pytest.mark.parametrize("batch_rows", [4, 65_536])
def test_distributed_staging_writes_the_driver_paths_files_byte_for_byte(tmp_path, monkeypatch, batch_rows):
    from curate.acquire import staging

    monkeypatch.setattr(staging, "BATCH_ROWS", batch_rows)  # shards read ranges across several batches
    spec = mixed_lists(tmp_path / "lists")
    layout, driver, _ = stage(spec, tmp_path / "driver", max_bytes=1 << 30)
    _, tasks, _ = stage(spec, tmp_path / "tasks", max_bytes=0)
    assert input_bytes(tmp_path / "driver") == input_bytes(tmp_path / "tasks")
    assert (driver.rows, driver.fingerprint) == (tasks.rows, tasks.fingerprint) == (21, driver.fingerprint)
    assert sorted(input_bytes(tmp_path / "driver")) == [f"{layout.shard_name(i)}.parquet" for i in range(6)]
    whole = read_inputs(spec, DEMO.model_copy(update={"save_additional_columns": ["n"]}), 4)
    staged = pq.read_table(tmp_path / "tasks" / "input")  # the folder reads as the old urls.parquet did
    assert staged.equals(whole) and staged.column("key").to_pylist()[:5] == [
        "000000",
        "000001",
        "000002",
        "000003",
        "000010",
    ]
    assert not list((tmp_path / "tasks" / ".tmp").iterdir())  # the staged list copies are gone


def test_distributed_staging_in_ray_tasks(tmp_path, ray_session):
    from curate import runtime

    spec = mixed_lists(tmp_path / "lists")
    stage(spec, tmp_path / "driver", max_bytes=1 << 30)
    stage(spec, tmp_path / "tasks", max_bytes=0, run_tasks=runtime.run_tasks)
    assert input_bytes(tmp_path / "driver") == input_bytes(tmp_path / "tasks")


def test_a_bad_list_file_is_refused_by_the_distributed_path_before_any_download(tmp_path, ray_session):
    from curate.run import run_pipeline

    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.csv").write_bytes(encode(ROWS, "csv"))
    bad = b'url,caption\nhttp://a/0.jpg,ok\nhttp://a/1.jpg,"a cat\nhttp://a/2.jpg,a dog\n'
    (tmp_path / "lists" / "b.csv").write_bytes(bad)
    recipe = load_recipe("demo", ["input.driver_max_bytes=0"])
    with pytest.raises(InputError, match=r"^\S*b.csv: line 3: a quoted value is not closed") as err:
        run_pipeline(recipe, tmp_path / "lists", tmp_path / "run")
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "raw").exists() or not list((tmp_path / "run" / "raw").iterdir())


def test_a_resumed_run_checks_its_input_and_an_old_runs_urls_parquet_still_resumes(tmp_path):
    from curate.acquire import staging

    spec = mixed_lists(tmp_path / "lists")
    _, first, manifest = stage(spec, tmp_path / "run", max_bytes=0)
    before = input_bytes(tmp_path / "run")
    _, again, _ = stage(spec, tmp_path / "run", max_bytes=1 << 30, manifest=manifest)  # a resume: nothing rewritten
    assert again.fingerprint == first.fingerprint and input_bytes(tmp_path / "run") == before
    with pytest.raises(InputError, match="was made from a different URL list"):
        stage(spec[:2], tmp_path / "run", max_bytes=0, manifest=manifest)

    old = tmp_path / "old"  # a run made by an earlier version: one urls.parquet, another kind of fingerprint
    (old / "input").mkdir(parents=True)
    pq.write_table(pq.read_table(tmp_path / "run" / "input"), old / "input" / "urls.parquet")
    legacy = {"input_fingerprint": "0123456789abcdef"}
    stage(spec, old, max_bytes=0, manifest=legacy)
    assert legacy["input_fingerprint"] == first.fingerprint and legacy["input_fingerprint_version"] == 2
    assert sorted(p.name for p in (old / "input").iterdir()) == ["urls.parquet"]  # readers fall back to it
    assert staging._input_rows(str(old), "00001").equals(pq.read_table(tmp_path / "run" / "input" / "00001.parquet"))
    with pytest.raises(InputError, match="was made from a different URL list"):
        stage(spec[1:], old, max_bytes=0, manifest={"input_fingerprint": "0123456789abcdef"})


def test_duplicate_keys_across_or_within_existing_shards_are_refused(tmp_path):
    from curate.acquire.existing import check_unique_keys

    def shard(name, keys):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"key": keys, "raw_shard": [name] * len(keys)}), path)
        return str(path)

    check_unique_keys([shard("00000", ["a", "b"]), shard("00001", ["c"])], "in")
    with pytest.raises(InputError, match=r"in: key 'b' is in more than one shard \(raw shards 00000, 00001\)"):
        check_unique_keys([shard("00000", ["a", "b"]), shard("00001", ["c", "b"])], "in")
    with pytest.raises(InputError, match=r"key 'c' is in more than one shard \(raw shards 00002, 00002\)"):
        check_unique_keys([shard("00002", ["c", "c"])], "in")


def test_the_distributed_path_refuses_what_the_driver_path_refuses(tmp_path):
    (tmp_path / "clash").mkdir()
    pq.write_table(
        pa.table({"url": ["http://a/0.jpg"], "caption": ["a"], "n": ["text"]}), tmp_path / "clash" / "a.parquet"
    )
    pq.write_table(
        pa.table({"url": ["http://a/1.jpg"], "caption": ["b"], "n": [[1]]}), tmp_path / "clash" / "b.parquet"
    )
    (tmp_path / "empty").mkdir()
    pq.write_table(
        pa.table(
            {"url": pa.array([], pa.string()), "caption": pa.array([], pa.string()), "n": pa.array([], pa.int64())}
        ),
        tmp_path / "empty" / "a.parquet",
    )
    for folder, message in (("clash", "the list files disagree on a column's type"), ("empty", "no rows")):
        for max_bytes in (1 << 30, 0):
            with pytest.raises(InputError, match=rf"^{tmp_path / folder}: {message}"):
                stage(tmp_path / folder, tmp_path / f"run-{folder}-{max_bytes}", max_bytes=max_bytes)


@pytest.mark.slow
def test_a_run_staged_by_tasks_downloads_each_shard_from_its_own_input_file(served_corpus, ray_session, tmp_path):
    from curate.acquire import staging
    from curate.run import run_pipeline

    recipe = load_recipe("demo", ["acquire.samples_per_shard=40", "input.driver_max_bytes=0"])
    run_dir = tmp_path / "run"
    result = run_pipeline(recipe, served_corpus.urls, run_dir, until="acquire")
    (tmp_path / "driver").mkdir()
    cfg = recipe.input.model_copy(update={"driver_max_bytes": 1 << 30})
    layout, expected = staging.stage_urls(served_corpus.urls, cfg, 40, str(tmp_path / "driver"), {}, None)
    assert input_bytes(run_dir) == input_bytes(tmp_path / "driver")
    assert result.manifest["input_fingerprint"] == expected.fingerprint
    assert result.manifest["steps"]["acquire"]["shards"] == layout.n_shards
    raw = pa.concat_tables(pq.read_table(p, columns=["key"]) for p in sorted((run_dir / "raw").glob("*.parquet")))
    raw = raw.sort_by("key")
    staged = pq.read_table(run_dir / "input", columns=["key"]).sort_by("key")
    assert raw.column("key").equals(staged.column("key"))  # every input row went to its own shard's download
    hits = sum(served_corpus.server.hits.values())
    run_pipeline(load_recipe("demo", ["acquire.samples_per_shard=40"]), served_corpus.urls, run_dir, until="acquire")
    assert sum(served_corpus.server.hits.values()) == hits  # the driver path resumes it: same fingerprint
