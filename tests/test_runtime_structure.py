"""How stages run through Ray (issue 22), checked without timing: a model actor's torch gets the threads of
its CPUs, a task stage is set up once per worker process (not once per block), and annotate runs its CPU stages
in the task that reads a shard (or a row range of it), and a task that owns a whole shard commits it."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import runtime
from curate.demo.synthetic import tiny_image
from curate.recipe import build_recipe
from curate.run import run_pipeline
from curate.stage import Stage, append_columns

pytestmark = pytest.mark.slow


def table(rows: int) -> pa.Table:
    return pa.table({"key": [f"{i:04d}" for i in range(rows)]})


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_model_actor_runs_torch_on_as_many_threads_as_it_has_cpus(ray_session, cpus):
    class TorchThreads(Stage):  # a local class: Ray ships it to the actor by value
        name = "torch_threads"
        uses_actors = True
        writes = {"threads": pa.int32()}

        def setup(self) -> None:
            import torch

            torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the workers' environment leaves it

        def process(self, batch: pa.Table) -> pa.Table:
            import torch

            return append_columns(batch, {"threads": [torch.get_num_threads()] * len(batch)}, self.writes)

    out = runtime.run_stage(table(8), TorchThreads(batch_size=4, num_cpus=cpus, num_gpus=0))
    assert set(out.column("threads").to_pylist()) == {cpus}


def test_a_task_stage_is_set_up_once_per_worker_process_not_once_per_block(ray_session, tmp_path):
    marks = tmp_path / "setups"
    marks.mkdir()

    class CountedSetup(Stage):
        name = "counted_setup"
        writes = {"pid": pa.int64(), "rows_in_call": pa.int64()}

        def setup(self) -> None:
            (marks / f"{os.getpid()}-{uuid.uuid4().hex}").touch()

        def process(self, batch: pa.Table) -> pa.Table:
            columns = {"pid": [os.getpid()] * len(batch), "rows_in_call": [len(batch)] * len(batch)}
            return append_columns(batch, columns, self.writes)

    out = runtime.run_stage(table(40), CountedSetup(batch_size=4))
    assert sorted(out.column("key").to_pylist()) == table(40).column("key").to_pylist()
    assert set(out.column("rows_in_call").to_pylist()) == {4}
    setups = [p.name.split("-")[0] for p in marks.iterdir()]
    workers = {str(pid) for pid in out.column("pid").to_pylist()}
    assert sorted(setups) == sorted(workers)  # one setup in each worker that ran a block, not one per block


def write_img2dataset_shard(folder: Path, rows: int, shard: str = "00000") -> None:
    """One img2dataset output shard (``{shard}.tar``, ``.parquet``, ``_stats.json``) of ``rows`` tiny JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = [f"{shard}{i:04d}" for i in range(rows)]
    with tarfile.open(folder / f"{shard}.tar", "w") as tar:
        for i, key in enumerate(keys):
            data = tiny_image(i)
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    meta = {
        "key": keys,
        "url": [f"https://example.com/{i}.jpg" for i in range(rows)],
        "caption": [f"picture {i}" for i in range(rows)],
        "status": ["success"] * rows,
        "error_message": pa.nulls(rows, pa.string()),
        "original_width": pa.nulls(rows, pa.int32()),
        "original_height": pa.nulls(rows, pa.int32()),
    }
    pq.write_table(pa.table(meta), folder / f"{shard}.parquet")
    (folder / f"{shard}_stats.json").write_text(json.dumps({"count": rows, "successes": rows}))


def test_annotate_runs_task_stages_in_the_read_task_on_row_ranges_of_a_shard(ray_session, tmp_path):
    """The CPU stages run in the task that reads the shard (a separate read op held a CPU reserved and each
    512-row block cost a scheduling round trip), and a run of fewer shards than CPUs x TASKS_PER_CPU splits its
    shards into contiguous row ranges so every core works: 4 tasks of 384 rows here, not 3 blocks of 512."""
    import ray

    rows = 3 * runtime.READ_BLOCK_ROWS
    write_img2dataset_shard(tmp_path / "pool", rows)
    recipe = build_recipe({"annotate": [{"stage": "image"}], "decide": []}, "blocks.yaml")
    recipe.annotate.append(task_ids_stage())
    run_pipeline(recipe, tmp_path / "pool", tmp_path / "run", until="annotate")
    samples = pq.read_table(tmp_path / "run" / "samples" / "00000.parquet").sort_by("key")
    assert len(samples) == rows
    tasks = runtime.read_tasks(["00000"], ray.cluster_resources()["CPU"])
    assert len(tasks) == runtime.TASKS_PER_CPU * int(ray.cluster_resources()["CPU"]) > 1
    ids = samples.column("task_id").to_pylist()
    runs = [ids[i] for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    assert len(runs) == len(set(runs)) == len(tasks)  # one contiguous run of keys per task
    assert {ids.count(t) for t in runs} == {rows // len(tasks)}


def test_read_tasks_split_shards_only_when_there_are_fewer_than_the_cpus_can_use():
    assert runtime.read_tasks(["a", "b"], 2) == [{"shard": s, "part": i, "parts": 2} for s in "ab" for i in (0, 1)]
    assert len(runtime.read_tasks([f"{i:05d}" for i in range(10)], 2)) == 10
    assert runtime.read_tasks(["a"], 0.5) == [{"shard": "a", "part": 0, "parts": 1}]


def task_ids_stage() -> Stage:
    """A stage that writes the id of the Ray task that ran it (defined here: Ray workers cannot import a test
    module, so it travels by value)."""
    import ray

    class TaskIds(Stage):
        name = "task_ids"
        writes = {"task_id": pa.string()}

        def process(self, batch: pa.Table) -> pa.Table:
            task = ray.get_runtime_context().get_task_id()
            return append_columns(batch, {"task_id": [task] * len(batch)}, self.writes)

    return TaskIds(batch_size=64)


@pytest.mark.parametrize("shards", [1, 4])
def test_a_task_that_annotates_a_whole_shard_commits_it_itself(ray_session, tmp_path, shards):
    """With as many shards as the cluster's CPUs x TASKS_PER_CPU, each shard is one task, which commits the
    shard's rows itself: no part files, no commit task. A shard split over several tasks is committed from its
    part files by a task of its own."""
    import ray

    from curate import annotated

    for i in range(shards):
        write_img2dataset_shard(tmp_path / "pool", 40, f"{i:05d}")
    recipe = build_recipe({"annotate": [{"stage": "image"}], "decide": []}, "commit.yaml")
    run, parts, log = tmp_path / "run", tmp_path / "parts", tmp_path / "commits"
    run_pipeline(recipe, tmp_path / "pool", run, until="acquire")
    log.mkdir()

    def commit(shard: str, rows) -> int:  # runs in a Ray task: record who committed what, then commit
        got = "rows" if isinstance(rows, pa.Table) else "parts"
        (log / f"{shard}.json").write_text(json.dumps([got, ray.get_runtime_context().get_task_id()]))
        return annotated.commit_shard(shard, rows, str(run), [])

    names = [f"{i:05d}" for i in range(shards)]
    whole = len(runtime.read_tasks(names, ray.cluster_resources()["CPU"])) == shards
    assert whole == (shards == 4)
    done = runtime.annotate(
        str(run), names, [*recipe.annotate, task_ids_stage()], str(parts), dict.fromkeys(names, 40), commit
    )
    assert done == dict.fromkeys(names, 40)
    for name in names:
        got, task = json.loads((log / f"{name}.json").read_text())
        samples = pq.read_table(run / "samples" / f"{name}.parquet")
        assert samples.column("key").to_pylist() == sorted(samples.column("key").to_pylist())
        stage_tasks = set(samples.column("task_id").to_pylist())
        if whole:
            assert (got, stage_tasks) == ("rows", {task})  # committed by the task that ran the stages
        else:
            assert got == "parts" and task not in stage_tasks and len(stage_tasks) > 1
    assert [p for p in parts.rglob("*") if p.is_file()] == []  # none written, or all removed by the commit
    assert parts.exists() != whole
