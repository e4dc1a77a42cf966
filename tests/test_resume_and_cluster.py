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


def reasons(run_dir) -> dict[str, str | None]:
    table = pq.read_table(f"{run_dir}/decisions", columns=["key", "reason"])  # one file per raw shard
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys))
    return dict(zip(keys, table.column("reason").to_pylist(), strict=True))


def expected_reasons(urls, run_dir) -> dict[str, str | None]:
    """The reason every row of the URL list ends with in an uninterrupted run (the corpus plants them; the
    demo run on the served corpus ends with exactly these, test_pipeline.py), by the keys ``run_dir`` gave."""
    keys = pq.read_table(f"{run_dir}/input", columns=["key"]).column("key").to_pylist()  # in URL-list order
    return dict(zip(keys, pq.read_table(urls).column("expected_reason").to_pylist(), strict=True))


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
    """The uninterrupted result is the corpus's planted outcome: every row's reason, not only the kept keys
    (a second, uninterrupted `curate run` of the same list cost a third of this test and checked less)."""
    interrupted = tmp_path / "interrupted"
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

    proc = curate_run(slow_corpus, interrupted)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert Manifest(interrupted).steps["acquire"]["shards_downloaded"] == total - len(done_before)
    expected = expected_reasons(slow_corpus, interrupted)
    assert reasons(interrupted) == expected
    assert sum(r is None for r in expected.values()) > 0


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
