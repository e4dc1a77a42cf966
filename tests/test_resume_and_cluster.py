"""Fault and scale: a killed run resumes to the same result; a two-node Ray cluster shares the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from curate.acquire.download import complete_shards
from curate.manifest import Manifest
from curate.recipe import load_recipe
from curate.run import run_pipeline

pytestmark = pytest.mark.slow

SETTINGS = ["--set", "acquire.samples_per_shard=10", "--set", "acquire.threads=1"]


def curate_run(urls, out, **popen) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "curate",
        "run",
        "demo",
        "--input",
        str(urls),
        "--output",
        str(out),
        *SETTINGS,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def kept_keys(run_dir) -> list[str]:
    table = pq.read_table(f"{run_dir}/decisions")  # one file per raw shard
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys))
    return sorted(k for k, keep in zip(keys, table.column("keep").to_pylist(), strict=True) if keep)


def wait_until_stable(raw_dir, quiet_s: float = 4.0, timeout: float = 60) -> set[str]:
    """Complete shards once none has appeared for ``quiet_s``: workers of a killed driver may
    still finish the shard they hold (each is atomic, so that is harmless)."""
    deadline = time.monotonic() + timeout
    seen, since = complete_shards(raw_dir), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline
        time.sleep(0.2)
        now = complete_shards(raw_dir)
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


def test_killed_run_resumes_to_the_uninterrupted_result(slow_corpus, tmp_path):
    interrupted, clean = tmp_path / "interrupted", tmp_path / "clean"
    proc = curate_run(slow_corpus, interrupted, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(complete_shards(interrupted / "raw")) < 2 if (interrupted / "raw").exists() else True:
        assert proc.poll() is None, f"run ended before it could be interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = wait_until_stable(interrupted / "raw")
    total = Manifest(interrupted).steps["acquire"]["shards"]
    assert 2 <= len(done_before) < total, "the kill must land in the middle of acquisition"
    assert Manifest(interrupted).steps["acquire"]["status"] == "running"  # what `cat manifest.json` shows

    for out in (interrupted, clean):
        proc = curate_run(slow_corpus, out)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert Manifest(interrupted).steps["acquire"]["shards_downloaded"] == total - len(done_before)
    assert kept_keys(interrupted) == kept_keys(clean)
    assert len(kept_keys(clean)) > 0


def test_two_node_cluster_runs_the_recipe_on_both_nodes(served_corpus, tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "temp_dir": os.environ["CURATE_RAY_TMPDIR"],
        },
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        recipe = load_recipe("demo", ["acquire.samples_per_shard=20"])
        result = run_pipeline(recipe, served_corpus.urls, tmp_path / "run", address=cluster.address)
        nodes = Manifest(tmp_path / "run").steps["acquire"]["nodes"]
        assert len(nodes) == 2, f"acquire ran on {nodes}"
        expected = served_corpus.expected_reasons()
        assert result.funnel["steps"]["kept"] == sum(r is None for r in expected)
    finally:
        ray.shutdown()
        cluster.shutdown()
