"""Retry only what failed: `curate run --retry-failed` downloads again the rows whose download failed for a
transient reason (5xx, timeouts), never complete samples, and the run's decisions and outputs include them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import curate.acquire.download
from curate.acquire.download import AcquireConfig, ShardLayout, download_shard, retry_shard, retryable_keys
from curate.acquire.inputs import InputError, download_rows, prepare_inputs
from curate.acquire.raw import read_shard
from curate.acquire.staging import stage_table
from curate.demo.corpus import DemoRow, WebObject, build_corpus
from curate.demo.server import Hostile, LoopbackServer, write_url_list
from curate.recipe import load_recipe
from curate.run import run_pipeline

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


class ManifestWatch:
    """Reads RUN/manifest.json every 20 ms from another thread: the (acquire_retry, annotate) statuses seen."""

    def __init__(self, run: Path) -> None:
        self.path, self.seen, self.stop = run / "manifest.json", set(), threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(0.02):
            steps = json.loads(self.path.read_text())["steps"]  # replaced atomically, never half-written
            self.seen.add((steps.get("acquire_retry", {}).get("status"), steps.get("annotate", {}).get("status")))

    def __enter__(self) -> ManifestWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    """The demo corpus in 4 download shards, with 4 clean URLs answering 503, one slow URL and one always
    busy, run once; the server recovers (the slow URL answers in 1 s, within the 2 s timeout); run again with
    --retry-failed; then once more, when only the busy URL is left to retry. Yields what each run saw."""
    objects, rows = build_corpus(n_clean=40, seed=7, slow_delay_s=4.0)  # the demo recipe's timeout is 2 s
    objects["/robots.jpg"] = Hostile("robots", target="noai", body=jpeg())
    objects["/busy.jpg"] = busy(WebObject("/busy.jpg", jpeg(), "image/jpeg"))
    rows = [
        *rows,
        DemoRow("/robots.jpg", "an image its owner keeps from AI training", "robots", "robots_disallowed"),
        DemoRow("/busy.jpg", "a photo on a server that stays overloaded", "busy", "download_error"),
    ]
    flaky = [r.path for r in rows if r.defect is None][:N_FLAKY]
    (slow,) = [r.path for r in rows if r.defect == "slow"]
    healthy = {path: objects[path] for path in flaky}
    healthy[slow] = WebObject(slow, objects[slow].body, objects[slow].content_type, delay_s=1.0)
    for path in flaky:
        objects[path] = busy(objects[path])
    tmp = tmp_path_factory.mktemp("retry")
    run, recipe = tmp / "run", load_recipe("demo", ["acquire.samples_per_shard=16"])
    with LoopbackServer(objects) as server:
        urls = write_url_list(rows, server.base_url, tmp / "urls.parquet")
        run_pipeline(recipe, urls, run)
        before = {"reasons": reasons(run), "members": image_members(run), "hits": server.hits}
        objects.update(healthy)  # the server has recovered
        with ManifestWatch(run) as watch:
            second = run_pipeline(recipe, urls, run, retry_failed=[])
        after = {"reasons": reasons(run), "members": image_members(run), "hits": server.hits}
        third = run_pipeline(recipe, urls, run, retry_failed=["download_error"])
        last = {"reasons": reasons(run), "hits": server.hits}
    keys = pq.read_table(run / "input", columns=["key"])["key"].to_pylist()  # row order, as the URL list
    yield {
        "run": run,
        "rows": rows,
        "key_of": {r.path: key for r, key in zip(rows, keys, strict=True)},
        "flaky": flaky,
        "slow": slow,
        "second": second.manifest,
        "third": third.manifest,
        "before": before,
        "after": after,
        "last": last,
        "watched": watch.seen,
    }


def test_the_first_run_records_the_transient_failures(runs):
    got, key_of = runs["before"]["reasons"], runs["key_of"]
    assert [got[key_of[p]] for p in runs["flaky"]] == ["download_error"] * N_FLAKY
    assert got[key_of[runs["slow"]]] == "download_timeout"
    assert got[key_of["/robots.jpg"]] == "robots_disallowed"


def test_retried_rows_are_decided_and_emitted_and_nothing_else_is_requested_again(runs):
    run, rows, key_of = runs["run"], runs["rows"], runs["key_of"]
    recovered = [*runs["flaky"], runs["slow"]]
    again = runs["after"]["hits"] - runs["before"]["hits"]
    assert again == Counter([*recovered, "/busy.jpg"])  # neither complete samples, nor 404s, nor robots refusals
    assert all(runs["after"]["hits"][r.path] == 1 for r in rows if r.path not in recovered and r.defect is None)
    got = runs["after"]["reasons"]
    assert len(got) == len(rows)
    assert {r.path: got[key_of[r.path]] for r in rows} == {r.path: r.expected_reason for r in rows} | {
        runs["slow"]: None  # it answered in time on the retry
    }
    grown = runs["after"]["members"] - runs["before"]["members"]
    assert sorted(grown) == sorted(f"{key_of[p]}.jpg" for p in recovered)
    assert max(runs["after"]["members"].values()) == 1  # no duplicate member names
    emitted = set(pq.read_table(run / "metadata", columns=["key"])["key"].to_pylist())
    assert {key_of[p] for p in recovered} <= emitted
    retry = runs["second"]["steps"]["acquire_retry"]
    assert (retry["rows_retried"], retry["recovered"], retry["still_failing"]) == (6, 5, 1)
    assert retry["shards"] == len({key_of[p][:5] for p in [*recovered, "/busy.jpg"]}) < 4  # shards with failures
    stats = [json.loads(p.read_text()) for p in (run / "raw").glob("*_stats.json")]
    assert sum(s["count"] for s in stats) == len(rows)
    failed = sum(1 for r in rows if r.expected_reason in ("download_error", "robots_disallowed"))
    assert sum(s["failed_to_download"] for s in stats) == failed


def test_annotate_is_stale_while_the_retry_downloads_and_runs_again(runs):
    assert ("running", "stale") in runs["watched"]
    assert ("running", "done") not in runs["watched"]  # a crash now could not leave signals without the retried rows
    annotate = runs["second"]["steps"]["annotate"]
    assert (annotate["executions"], annotate["status"]) == (2, "done")
    changed = {runs["key_of"][p][:5] for p in [*runs["flaky"], runs["slow"]]}  # shards with a recovered row
    assert annotate["shards_annotated"] == len(changed) < len(annotate["raw_shards"])  # only they lost their signals


def test_a_retry_that_changes_nothing_keeps_the_signals(runs):
    assert runs["last"]["hits"] - runs["after"]["hits"] == Counter(["/busy.jpg"])
    retry, annotate = runs["third"]["steps"]["acquire_retry"], runs["third"]["steps"]["annotate"]
    assert (retry["rows_retried"], retry["changed"]) == (1, 0)
    assert (annotate["executions"], annotate["status"]) == (2, "done")
    assert runs["last"]["reasons"] == runs["after"]["reasons"]


# --- one shard, directly: what a crash in the middle of a retry leaves --------------------------------


def download(tmp_path: Path, urls: list[str]) -> tuple[ShardLayout, pa.Table, AcquireConfig]:
    table = pa.table({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]})
    inputs = prepare_inputs(table, load_recipe("demo").input, len(urls), "test")
    layout, cfg = ShardLayout(len(urls), len(urls)), AcquireConfig(allow_private_addresses=["127.0.0.1/32"])
    stage_table(inputs, layout, str(tmp_path / "input"))
    (tmp_path / "raw").mkdir()
    download_shard(0, download_rows(inputs, layout, 0, []), str(tmp_path / "raw"), layout, cfg)
    return layout, download_rows(inputs, layout, 0, []), cfg


def test_a_crash_between_tar_and_parquet_leaves_a_readable_shard_the_next_retry_fixes(tmp_path, monkeypatch):
    ok = WebObject("/ok.jpg", jpeg(), "image/jpeg")
    objects = {"/ok.jpg": ok, "/flaky.jpg": busy(WebObject("/flaky.jpg", ok.body, "image/jpeg"))}
    with LoopbackServer(objects) as server:
        urls = [server.url("/ok.jpg"), server.url("/flaky.jpg"), server.url("/gone.jpg")]
        layout, rows, cfg = download(tmp_path, urls)
        keys, raw = layout.keys().to_pylist(), tmp_path / "raw"
        files = ["00000.parquet", "00000.tar", "00000_stats.json"]
        assert retryable_keys(raw / "00000.parquet", ("download_error",)) == [keys[1]]  # a 404 is final
        objects["/flaky.jpg"] = WebObject("/flaky.jpg", ok.body, "image/jpeg")
        moved, real_replace = [], os.replace

        def crash_after_the_tar(src, dst):
            if moved:
                raise Killed
            moved.append(dst)
            return real_replace(src, dst)

        monkeypatch.setattr(curate.acquire.download.os, "replace", crash_after_the_tar)
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


def test_status_says_a_run_with_stale_signals_must_resume(tmp_path):
    from curate.report.status import step_order, where_it_stands

    done = {"status": "done"}
    steps = {name: dict(done) for name in step_order()} | {"acquire_retry": done, "annotate": {"status": "stale"}}
    manifest = {"steps": steps, "recipe": {}, "recipe_source": "demo", "input": "urls.parquet"}
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.html").write_text("<html></html>")
    lines = where_it_stands(tmp_path, manifest, step_order())
    assert lines[0] == "stopped before annotate (stale)."
    assert lines[1].startswith(f"resume with: curate run demo --input urls.parquet --output {tmp_path}")
