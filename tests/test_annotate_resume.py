"""Annotate per raw shard: each shard's signals are committed as it finishes, so a killed annotate resumes
with only the unfinished shards, new raw shards annotate only themselves, and changed stage settings
re-annotate everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.annotated import input_counts
from curate.manifest import Manifest
from curate.recipe import load_recipe
from curate.run import run_pipeline

pytestmark = pytest.mark.slow

SETTINGS = ["acquire.samples_per_shard=10", "emit.samples_per_shard=50"]

SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from curate.recipe import load_recipe
    from curate.run import run_pipeline
    from curate.stage import Stage

    DELAY_S = float(sys.argv[3])  # not a setting of the stage: the same stage, resumed at full speed

    class Slow(Stage):  # defined in __main__: Ray ships it (and DELAY_S) to its workers by value
        name = "slow"
        def process(self, batch):
            time.sleep(DELAY_S)
            return batch

    recipe = load_recipe("demo", sys.argv[4:])
    recipe.annotate.append(Slow(Slow.Config(batch_size=5)))
    run_pipeline(recipe, sys.argv[1], sys.argv[2])
    """
)
"""``curate run demo`` with one more stage that sleeps ``delay_s`` a batch: with 0.4 s, annotate lasts long enough
to be killed; its cache key is the same whatever the delay, so the resumed run need not wait."""


def slow_run(urls: Path, out: Path, delay_s: float = 0.4, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-c", SLOW_RUN, str(urls), str(out), str(delay_s), *SETTINGS]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def committed(run: Path) -> dict[str, float]:
    """``samples/{shard}.parquet`` files: shard name → mtime."""
    folder = run / "samples"
    return {p.stem: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} if folder.is_dir() else {}


def wait_until_stable(run: Path, quiet_s: float = 3.0) -> dict[str, float]:
    """Committed shards once none has appeared for ``quiet_s`` (a commit under way may still land; it is atomic)."""
    seen, since = committed(run), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        if (now := committed(run)) != seen:
            seen, since = now, time.monotonic()
    return seen


def kept(run: Path) -> list[str]:
    table = pq.read_table(run / "decisions", columns=["key", "keep"])
    return sorted(k for k, keep in zip(table["key"].to_pylist(), table["keep"].to_pylist(), strict=True) if keep)


def test_a_killed_annotate_resumes_with_only_the_unfinished_shards(served_corpus, tmp_path):
    run = tmp_path / "run"
    proc = slow_run(served_corpus.urls, run, start_new_session=True)
    deadline = time.monotonic() + 180
    while len(committed(run)) < 2:
        assert proc.poll() is None, f"run ended before it could be interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = wait_until_stable(run)
    annotate = Manifest(run).steps["annotate"]
    shards = annotate["raw_shards"]
    assert annotate["status"] == "running" and 2 <= len(before) < len(shards), "the kill must land inside annotate"

    proc = slow_run(served_corpus.urls, run, delay_s=0)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    annotate = Manifest(run).steps["annotate"]
    assert (annotate["status"], annotate["executions"]) == ("done", 2)
    assert (annotate["shards_annotated"], annotate["shards_reused"]) == (len(shards) - len(before), len(before))
    after = committed(run)
    assert sorted(after) == shards
    assert {s: after[s] for s in before} == before  # the committed shards were not written again
    assert not list((run / ".tmp").glob("*")) if (run / ".tmp").exists() else True
    samples = pq.read_table(run / "samples", columns=["key", "raw_shard"])
    inputs = pq.read_table(run / "input", columns=["key"])
    assert sorted(samples["key"].to_pylist()) == sorted(inputs["key"].to_pylist())  # each row once
    for shard in shards:  # each file holds its own shard's rows, sorted by key
        keys = pq.read_table(run / "samples" / f"{shard}.parquet", columns=["key", "raw_shard"])
        assert set(keys["raw_shard"].to_pylist()) == {shard}
        assert keys["key"].to_pylist() == sorted(keys["key"].to_pylist())


@pytest.fixture(scope="module")
def full_run(served_corpus, ray_session, tmp_path_factory) -> Path:
    """The demo recipe run to the end on the served corpus, in shards of 10."""
    run = tmp_path_factory.mktemp("annotate") / "run"
    run_pipeline(load_recipe("demo", SETTINGS), served_corpus.urls, run)
    return run


def test_new_raw_shards_annotate_only_themselves(full_run, served_corpus, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    shards = Manifest(run).steps["annotate"]["raw_shards"]
    expected = kept(run)
    for shard in shards[-3:]:  # these raw shards were not there yet: acquire downloads them now
        for path in [*(run / "raw").glob(f"{shard}*"), run / "samples" / f"{shard}.parquet"]:
            path.unlink()
    before = committed(run)
    run_pipeline(load_recipe("demo", SETTINGS), served_corpus.urls, run)
    annotate = Manifest(run).steps["annotate"]
    assert (annotate["shards_annotated"], annotate["shards_reused"]) == (3, len(shards) - 3)
    after = committed(run)
    assert sorted(after) == shards and {s: after[s] for s in before} == before
    assert kept(run) == expected


def test_changed_stage_settings_annotate_every_shard_and_resources_none(full_run, served_corpus, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    shards = Manifest(run).steps["annotate"]["raw_shards"]
    run_pipeline(load_recipe("demo", [*SETTINGS, "annotate.image.batch_size=7"]), served_corpus.urls, run)
    annotate = Manifest(run).steps["annotate"]
    assert annotate["executions"] == 1  # a resource setting: nothing to annotate again

    (run / "samples" / "stray.parquet").write_bytes(b"")  # e.g. an older run's file, not named by shard: removed

    before = committed(run)
    run_pipeline(load_recipe("demo", [*SETTINGS, "annotate.image.dhash=true"]), served_corpus.urls, run)
    annotate = Manifest(run).steps["annotate"]
    assert (annotate["executions"], annotate["shards_annotated"], annotate["shards_reused"]) == (2, len(shards), 0)
    after = committed(run)
    assert sorted(after) == shards and all(after[s] != before[s] for s in shards)
    assert "dhash" in pq.read_schema(run / "samples" / f"{shards[0]}.parquet").names


def test_input_counts_reads_either_input_layout(tmp_path):
    rows = pa.table({"key": ["000", "001", "010"], "raw_shard": ["00000", "00000", "00001"]})
    (tmp_path / "old" / "input").mkdir(parents=True)
    pq.write_table(rows, tmp_path / "old" / "input" / "urls.parquet")
    assert input_counts(str(tmp_path / "old")) == {"00000": 2, "00001": 1}
    (tmp_path / "new" / "input").mkdir(parents=True)
    for shard in ("00000", "00001"):
        pq.write_table(
            rows.filter(pa.compute.equal(rows["raw_shard"], shard)), tmp_path / "new" / "input" / f"{shard}.parquet"
        )
    assert input_counts(str(tmp_path / "new")) == {"00000": 2, "00001": 1}


def failing_stage(shard: str, flag: Path, samples: Path):
    """A stage that fails on raw shard ``shard`` the first time (until ``flag`` exists), once the other shards'
    commits have settled; defined in a function so Ray ships the class to its workers by value."""
    from curate.stage import Stage

    class FailOnce(Stage):
        name = "fail_once"

        def process(self, batch: pa.Table) -> pa.Table:
            if shard in batch["raw_shard"].to_pylist() and not flag.exists():
                seen, since = -1, time.monotonic()
                while time.monotonic() - since < 3.0:
                    time.sleep(0.2)
                    if (now := len(list(samples.glob("*.parquet")))) != seen:
                        seen, since = now, time.monotonic()
                flag.touch()
                raise RuntimeError(f"planted failure in raw shard {shard}")
            return batch

    return FailOnce(FailOnce.Config(batch_size=10))


def test_a_failed_annotate_keeps_the_finished_shards(full_run, served_corpus, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    shards = Manifest(run).steps["annotate"]["raw_shards"]
    small = [f"annotate.{s}.batch_size=10" for s in ("image", "hashes", "caption", "language")]  # ~ a task a shard
    recipe = load_recipe("demo", [*SETTINGS, *small])
    recipe.annotate.append(failing_stage(shards[-1], tmp_path / "failed-once", run / "samples"))
    with pytest.raises(Exception, match="planted failure"):
        run_pipeline(recipe, served_corpus.urls, run)  # a new stage: every shard is annotated again
    before = committed(run)
    assert 1 <= len(before) < len(shards) and shards[-1] not in before
    assert Manifest(run).steps["annotate"]["status"] == "failed"

    run_pipeline(recipe, served_corpus.urls, run)
    annotate = Manifest(run).steps["annotate"]
    assert (annotate["shards_annotated"], annotate["shards_reused"]) == (len(shards) - len(before), len(before))
    after = committed(run)
    assert sorted(after) == shards and {s: after[s] for s in before} == before
