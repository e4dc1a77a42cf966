"""A run directory has one writer, never loses the user's files, and tells the truth about itself."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app, existing_outputs
from curate.lock import LOCK_NAME, RunLock, RunLocked, holder
from curate.manifest import Manifest
from curate.run import clean_leftovers, prepare_run_dir, redecide


@pytest.fixture
def run(curated_shards, ray_session, tmp_path) -> Path:
    """A private copy of the finished demo run (the session fixture's run stays untouched)."""
    copy = tmp_path / "run"
    shutil.copytree(curated_shards.parent, copy, symlinks=True)
    return copy


def curate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curate", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def start(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "curate", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outputs_agree(run: Path) -> int:
    """decisions/, shards/ (sizes.json) and metadata/ say the same kept set; returns its size."""
    decisions = pq.read_table(run / "decisions")
    kept = sorted(
        k for k, keep in zip(decisions["key"].to_pylist(), decisions["keep"].to_pylist(), strict=True) if keep
    )
    metadata = sorted(pq.read_table(run / "metadata", columns=["key"])["key"].to_pylist())
    sizes = json.loads((run / "shards" / "sizes.json").read_text())
    assert kept == metadata
    assert sum(sizes.values()) == len(kept)
    return len(kept)


def test_a_second_writer_is_refused_naming_the_holder(run):
    with RunLock(run, command="curate run demo") as lock:
        assert holder(run)["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=rf"pid {os.getpid()} on host {socket.gethostname()}.*curate run demo"):
            redecide(run, ["decide.image_size.min_side=256"])
        proc = curate("decide", run, "--set", "decide.image_size.min_side=256")
        assert proc.returncode == 2, proc.stderr
        assert f"is being written by pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
        assert lock.took_over is None
    assert holder(run) is None and not (run / LOCK_NAME).exists()  # released and removed


def test_a_stale_lock_of_a_dead_process_is_taken_over(run, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "2026-01-01T00:00:00", "command": "x"}
    (run / LOCK_NAME).write_text(json.dumps(stale))  # what `kill -9` leaves: the record, no flock
    assert holder(run) is None
    with RunLock(run) as lock:
        assert lock.took_over == stale
    assert f"taking over the stale lock on {run} left by pid {stale['pid']}" in capsys.readouterr().err


@pytest.mark.slow
def test_concurrent_writers_one_wins_and_the_outputs_agree(run):
    before = outputs_agree(run)
    procs = [
        start("decide", run, "--set", "decide.image_size.min_side=256"),
        start("decide", run, "--set", "decide.image_size.min_side=100"),
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is being written by pid" in loser and "Traceback" not in loser
    kept = outputs_agree(run)
    winner = Manifest(run).data["recipe"]["decide"][0]["min_side"]
    assert kept < before if winner == 256 else kept <= before
    assert not (run / LOCK_NAME).exists()


def test_a_folder_curate_did_not_make_is_refused_and_left_intact(tmp_path, served_corpus):
    folder = tmp_path / "mine"
    for name in ("metadata", "report", "samples", "llava"):
        (folder / name).mkdir(parents=True)
        (folder / name / "precious.txt").write_text("mine")
    proc = curate("run", "demo", "--input", served_corpus.urls, "--output", folder)
    assert proc.returncode == 2
    assert "is not empty and is not a curate run" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["llava", "metadata", "report", "samples"]
    assert all((folder / n / "precious.txt").read_text() == "mine" for n in ("metadata", "report", "samples", "llava"))
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_run_dir(empty)  # an empty folder is fine


def test_emit_removes_only_an_export_it_wrote(run):
    manifest = Manifest(run)
    manifest.steps["emit"].pop("llava_records")  # as if the last emit wrote no LLaVA export
    manifest.save()
    shutil.rmtree(run / "llava")
    (run / "llava").mkdir()
    (run / "llava" / "notes.txt").write_text("the user's")
    redecide(run, ["emit.llava=false"])
    assert (run / "llava" / "notes.txt").read_text() == "the user's"

    redecide(run, ["emit.llava=true"])  # curate's own export is replaced, then removed when turned off
    assert Manifest(run).steps["emit"]["llava_records"] > 0 and (run / "llava" / "pretrain.json").is_file()
    redecide(run, ["emit.llava=false"])
    assert not (run / "llava").exists()


def test_a_writer_cleans_what_a_killed_one_left(run):
    leftovers = [
        run / ".tmp" / "annotate-0badc0de" / "all",
        run / ".tmp" / "emit-0badc0de" / "shards",
        run / "raw" / ".00000-abc123",
    ]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "part.parquet").write_bytes(b"x" * 1000)
    files = [run / "decisions" / "decisions.parquet.tmp", run / "manifest.json.tmp-0badc0de"]
    for path in files:
        path.write_bytes(b"half")
    fresh_report = run / ".tmp" / "report-12345678"  # a `curate report` may be writing it now
    fresh_report.mkdir()
    removed = clean_leftovers(run)
    assert {leftovers[0].parent, leftovers[1].parent, leftovers[2], *files} <= set(removed)
    assert not any(p.exists() for p in [*leftovers, *files])
    assert fresh_report.exists() and (run / "raw" / "00000.tar").exists()

    (run / ".tmp" / "emit-0badc0de").mkdir()
    redecide(run)  # `curate decide` cleans too, holding the lock
    assert not (run / ".tmp" / "emit-0badc0de").exists()


def test_status_is_complete_only_with_a_report(run):
    runner = CliRunner(env={"COLUMNS": "200"})
    assert "complete: every step finished." in runner.invoke(app, ["status", str(run)]).stdout
    shutil.rmtree(run / "report")
    result = runner.invoke(app, ["status", str(run)])
    assert result.exit_code == 0, result.output
    assert "complete: every step finished." not in result.stdout
    assert "stopped before report (not started)." in result.stdout
    assert f"resume with: curate report {run}" in result.stdout


def test_until_acquire_points_only_at_what_exists(tmp_path, served_corpus):
    run = tmp_path / "run"
    (run / "raw").mkdir(parents=True)
    Manifest(run).save()
    listed = existing_outputs(run)
    assert [p.split(" ")[0] for p in listed] == [str(run / "raw"), str(run / "manifest.json")]


def test_a_second_demo_serves_the_same_urls(tmp_path):
    from curate.demo.corpus import build_corpus
    from curate.demo.server import LoopbackServer, previous_port, write_url_list

    objects, rows = build_corpus(n_clean=3)
    urls = tmp_path / "demo_urls.parquet"
    assert previous_port(urls) == 0
    with LoopbackServer(objects) as server:
        write_url_list(rows, server.base_url, urls)
        port = server._server.server_address[1]
    assert previous_port(urls) == port
    with LoopbackServer(objects, port=previous_port(urls)) as again:  # the URL list, and so the run, match
        assert again.base_url.endswith(f":{port}")
