"""Retry only what failed: `curate run --retry-failed` downloads again the rows whose download failed for a
transient reason (5xx, timeouts), never complete samples, and the run's decisions and outputs include them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import curate.acquire
from curate.acquire import AcquireConfig, ShardLayout, download_shard, retry_shard, retryable_keys
from curate.demo.corpus import DemoRow, WebObject, build_corpus
from curate.demo.server import Hostile, LoopbackServer, write_url_list
from curate.raw import read_shard
from curate.recipe import load_recipe
from curate.run import run_pipeline
from curate.urls import InputError, download_rows, prepare_inputs

N_FLAKY = 4


class Killed(Exception):
    """The process dies here."""


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), (200, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


def busy(obj: WebObject) -> WebObject:
    """What a server under load answers instead of ``obj``: 503."""
    return WebObject(obj.path, b"<html>503 busy</html>", "text/html", status=503)


def image_members(run: Path) -> Counter:
    """Image members (by name) of every raw tar of ``run``."""
    names: Counter = Counter()
    for path in sorted((run / "raw").glob("*.tar")):
        with tarfile.open(path) as tar:
            names.update(m.name for m in tar.getmembers() if m.name.endswith(".jpg"))
    return names


def reasons(run: Path) -> dict[str, str | None]:
    decisions = pq.read_table(run / "decisions", columns=["key", "reason"]).to_pylist()
    assert len(decisions) == len({d["key"] for d in decisions})  # every row decided exactly once
    return {d["key"]: d["reason"] for d in decisions}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The demo corpus with 4 clean URLs answering 503 and one slow URL, run once; the server recovers;
    then run again with --retry-failed. Yields what each run saw."""
    objects, rows = build_corpus(n_clean=40, seed=7, slow_delay_s=4.0)  # the demo recipe's timeout is 2 s
    objects["/robots.jpg"] = Hostile("robots", target="noai", body=jpeg())
    rows = [*rows, DemoRow("/robots.jpg", "an image its owner keeps from AI training", "robots", "robots_disallowed")]
    flaky = [r.path for r in rows if r.defect is None][:N_FLAKY]
    (slow,) = [r.path for r in rows if r.defect == "slow"]
    healthy = {path: objects[path] for path in flaky}
    healthy[slow] = WebObject(slow, objects[slow].body, objects[slow].content_type)  # answers at once
    for path in flaky:
        objects[path] = busy(objects[path])
    tmp = tmp_path_factory.mktemp("retry")
    run, recipe = tmp / "run", load_recipe("demo")
    with LoopbackServer(objects) as server:
        urls = write_url_list(rows, server.base_url, tmp / "urls.parquet")
        first = run_pipeline(recipe, urls, run)
        before = {"reasons": reasons(run), "members": image_members(run), "hits": server.hits}
        objects.update(healthy)  # the server has recovered
        second = run_pipeline(recipe, urls, run, retry_failed=[])
        after = {"reasons": reasons(run), "members": image_members(run), "hits": server.hits}
    keys = pq.read_table(run / "input", columns=["key"])["key"].to_pylist()  # row order, as the URL list
    key_of = {r.path: key for r, key in zip(rows, keys, strict=True)}
    yield {
        "run": run,
        "rows": rows,
        "key_of": key_of,
        "flaky": flaky,
        "slow": slow,
        "first": first,
        "second": second,
        "before": before,
        "after": after,
    }


def test_the_first_run_records_the_transient_failures(two_runs):
    got, key_of = two_runs["before"]["reasons"], two_runs["key_of"]
    assert [got[key_of[p]] for p in two_runs["flaky"]] == ["download_error"] * N_FLAKY
    assert got[key_of[two_runs["slow"]]] == "download_timeout"
    assert got[key_of["/robots.jpg"]] == "robots_disallowed"


def test_retried_rows_are_decided_and_emitted_and_nothing_else_is_requested_again(two_runs):
    run, rows, key_of = two_runs["run"], two_runs["rows"], two_runs["key_of"]
    retried = [*two_runs["flaky"], two_runs["slow"]]
    again = two_runs["after"]["hits"] - two_runs["before"]["hits"]
    assert again == Counter(retried)  # neither complete samples, nor 404s, nor robots refusals
    assert all(two_runs["after"]["hits"][r.path] == 1 for r in rows if r.path not in retried and r.defect is None)
    got = two_runs["after"]["reasons"]
    assert len(got) == len(rows)
    assert {r.path: got[key_of[r.path]] for r in rows} == {r.path: r.expected_reason for r in rows} | {
        two_runs["slow"]: None  # it answered in time on the retry
    }
    grown = two_runs["after"]["members"] - two_runs["before"]["members"]
    assert sorted(grown) == sorted(f"{key_of[p]}.jpg" for p in retried)
    assert max(two_runs["after"]["members"].values()) == 1  # no duplicate member names
    emitted = set(pq.read_table(run / "metadata", columns=["key"])["key"].to_pylist())
    assert {key_of[p] for p in retried} <= emitted
    steps = two_runs["second"].manifest["steps"]
    assert {"rows_retried": 5, "recovered": 5, "still_failing": 0}.items() <= steps["acquire_retry"].items()
    assert steps["annotate"]["executions"] == 2 and steps["annotate"]["status"] == "done"
    stats = [json.loads(p.read_text()) for p in (run / "raw").glob("*_stats.json")]
    assert sum(s["count"] for s in stats) == len(rows)
    failed = sum(1 for r in rows if r.expected_reason in ("download_error", "robots_disallowed"))
    assert sum(s["failed_to_download"] for s in stats) == failed


# --- one shard, directly: what a crash in the middle of a retry leaves --------------------------------


def download(tmp_path: Path, urls: list[str]) -> tuple[ShardLayout, pa.Table, AcquireConfig]:
    table = pa.table({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]})
    inputs = prepare_inputs(table, load_recipe("demo").input, len(urls), "test")
    (tmp_path / "input").mkdir()
    pq.write_table(inputs, tmp_path / "input" / "urls.parquet")
    (tmp_path / "raw").mkdir()
    layout, cfg = ShardLayout(len(urls), len(urls)), AcquireConfig(allow_private_addresses=["127.0.0.1/32"])
    download_shard(0, download_rows(inputs, layout, 0, []), str(tmp_path / "raw"), layout, cfg)
    return layout, download_rows(inputs, layout, 0, []), cfg


def test_a_crash_between_tar_and_parquet_leaves_a_readable_shard_the_next_retry_fixes(tmp_path, monkeypatch):
    ok = WebObject("/ok.jpg", jpeg(), "image/jpeg")
    objects = {"/ok.jpg": ok, "/flaky.jpg": busy(WebObject("/flaky.jpg", ok.body, "image/jpeg"))}
    with LoopbackServer(objects) as server:
        urls = [server.url("/ok.jpg"), server.url("/flaky.jpg"), server.url("/gone.jpg")]
        layout, rows, cfg = download(tmp_path, urls)
        keys, raw, files = layout.keys(), tmp_path / "raw", ["00000.parquet", "00000.tar", "00000_stats.json"]
        assert retryable_keys(raw / "00000.parquet", ("download_error",)) == [keys[1]]  # a 404 is final
        objects["/flaky.jpg"] = WebObject("/flaky.jpg", ok.body, "image/jpeg")
        moved, real_replace = [], os.replace

        def crash_after_the_tar(src, dst):
            if moved:
                raise Killed
            moved.append(dst)
            return real_replace(src, dst)

        monkeypatch.setattr(curate.acquire.os, "replace", crash_after_the_tar)
        with pytest.raises(Killed):
            retry_shard(0, rows, [1], str(raw), layout, cfg)
        monkeypatch.undo()
        assert moved == [f"{raw}/00000.tar"] and sorted(p.name for p in raw.iterdir()) == files
        half = pa.concat_tables(read_shard(str(tmp_path), "00000")).to_pylist()  # new tar, old records
        assert [r["status"] for r in half] == ["success", "failed_to_download", "failed_to_download"]
        assert retryable_keys(raw / "00000.parquet", ("download_error",)) == [keys[1]]
        assert retry_shard(0, rows, [1], str(raw), layout, cfg)["recovered"] == 1
        assert server.hits["/ok.jpg"] == 1 and server.hits["/flaky.jpg"] == 3
    fixed = pa.concat_tables(read_shard(str(tmp_path), "00000")).to_pylist()
    assert [r["status"] for r in fixed] == ["success", "success", "failed_to_download"]
    assert fixed[1]["image"] == ok.body
    with tarfile.open(raw / "00000.tar") as tar:
        names = tar.getnames()
    assert len(names) == len(set(names)) and sorted(n for n in names if n.endswith(".jpg")) == [
        f"{keys[0]}.jpg",
        f"{keys[1]}.jpg",
    ]
    stats = json.loads((raw / "00000_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["failed_to_download"]) == (3, 2, 1)
    assert sorted(p.name for p in raw.iterdir()) == files  # no temp folder left


def test_nothing_is_rewritten_when_no_retried_row_changed(tmp_path):
    with LoopbackServer({"/busy.jpg": busy(WebObject("/busy.jpg", b"", "image/jpeg"))}) as server:
        layout, rows, cfg = download(tmp_path, [server.url("/busy.jpg")])
        before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "raw").iterdir()}
        counts = retry_shard(0, rows, [0], str(tmp_path / "raw"), layout, cfg)
        assert server.hits["/busy.jpg"] == 2
    assert counts == {"retried": 1, "recovered": 0, "still_failing": 1, "changed": 0}
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "raw").iterdir()} == before


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("robots_disallowed", "not retried, it is a final outcome"),
        ("blocked_address", "not retried, it is a final outcome"),
        ("too_small", "not retried, it is a final outcome"),
        ("no_such_reason", "unknown reason code"),
    ],
)
def test_a_final_or_unknown_reason_is_refused(tmp_path, reason, message):
    with pytest.raises(InputError, match=message):
        run_pipeline(load_recipe("demo"), tmp_path / "urls.parquet", tmp_path / "run", retry_failed=[reason])
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_the_cli_refuses_a_final_reason_with_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "curate", "run", "demo", "--input", str(tmp_path / "u.parquet")]
    cmd += ["--output", str(tmp_path / "run"), "--retry-reasons", "download_timeout,blocked_address"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--retry-reasons 'blocked_address': not retried" in " ".join(proc.stderr.split())
