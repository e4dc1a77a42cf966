"""How stages run through Ray (issue 22), checked without timing: a model actor's torch gets the threads of
its CPUs, a task stage is set up once per worker process (not once per block), and a table goes to a stage
in blocks of its batch size (so ``prepare`` tasks overlap the model)."""

from __future__ import annotations

import os
import uuid

import pyarrow as pa
import pytest

from curate import runtime
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
