"""The only module that imports Ray: start or join a cluster, run shard tasks, run stage chains.

Embedded by default (a new Ray on this machine, even beside a ``ray start`` one); ``address`` or ``RAY_ADDRESS`` joins a
cluster. Nodes of a cluster need curate installed, as they need Ray.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from tqdm.auto import tqdm

from curate import storage
from curate.acquire.raw import read_images, read_shard
from curate.stage import Stage

LOG_LEVEL: ContextVar[int | None] = ContextVar("curate_ray_log_level", default=None)
RAY_LOGGERS = ("ray", "ray.data")


@contextmanager
def log_level(level: int) -> Iterator[None]:
    """Ray's and Ray Data's log level for the block (``--quiet`` is ERROR: no INFO blocks, no token-auth warning).

    Sessions started inside pass it to ``ray.init``; progress bars show only below ERROR.
    """
    ctx = ray.data.DataContext.get_current()  # imports Ray Data, which sets its logger's level: save after
    saved = {name: logging.getLogger(name).level for name in RAY_LOGGERS}
    bars, stats = ctx.enable_progress_bars, ctx.verbose_stats_logs
    token = LOG_LEVEL.set(level)
    _apply_log_level(level)
    try:
        yield
    finally:
        LOG_LEVEL.reset(token)
        ctx.enable_progress_bars, ctx.verbose_stats_logs = bars, stats
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)


def _apply_log_level(level: int | None) -> None:
    """Set the ``ray`` and ``ray.data`` loggers (``ray.init`` and ``import ray.data`` reset them) and Ray Data's
    verbosity; ``None`` keeps Ray's defaults."""
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = False
    ctx.enable_progress_bars = level is None or level < logging.ERROR
    ctx.verbose_stats_logs = level is not None and level <= logging.DEBUG
    if level is not None:
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(level)


def progress(**kwargs: Any) -> tqdm:
    """A tqdm progress bar, off under ``--quiet`` (a log level of ERROR or above)."""
    level = LOG_LEVEL.get()
    return tqdm(disable=level is not None and level >= logging.ERROR, **kwargs)


@contextmanager
def session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the running Ray, join ``address``/``RAY_ADDRESS``, or start an embedded one for the block.

    Logs at the level of the enclosing :func:`log_level` block (WARNING outside one).
    """
    started = False
    level = LOG_LEVEL.get()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING if level is None else level, "log_to_driver": True}
        env = storage.worker_env()  # the recipe's storage_options, the same on every worker
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
        if address:
            ray.init(address=address, **kwargs)
        else:
            tmp = os.environ.get("CURATE_RAY_TMPDIR")
            # "local": a new Ray even when `ray start` left its address on this machine (ray.init() would join
            # that cluster, or fail on a stale address); a cluster is joined only when asked (`--address auto`)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=tmp, **kwargs)
        started = True
    _apply_log_level(level)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _call(fn: Callable, *args: Any) -> Any:
    return fn(*args)


def _on_node(fn: Callable, args: tuple) -> tuple[Any, str]:
    return fn(*args), ray.get_runtime_context().get_node_id()


def run_tasks(fn: Callable, calls: Sequence[tuple], desc: str, num_cpus: float = 1.0) -> list[tuple[Any, str]]:
    """Run ``fn(*args)`` for each args tuple as Ray tasks spread over the cluster.

    Returns ``(result, node_id)`` in call order; the first failure is raised (a task's
    :class:`curate.acquire.inputs.InputError` as itself, with its own message).
    """
    remote = ray.remote(_on_node).options(num_cpus=num_cpus, scheduling_strategy="SPREAD", max_retries=2)
    refs = [remote.remote(fn, args) for args in calls]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with progress(total=len(refs), desc=desc, unit="shard") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[index[done[0]]] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                cause = input_error(err)
                if cause is None:
                    raise
                raise cause from None
            bar.update(1)
    return results


def run_task(fn: Callable, args: tuple, desc: str, num_cpus: float = 1.0) -> Any:
    """Run ``fn(*args)`` as one Ray task and return its result: a global step (decide, the funnel, the report)
    runs on a worker, so the driver's memory stays flat whatever the pool's size.

    A :class:`ValueError` or :class:`LookupError` raised in the task (a recipe or input problem) comes back
    as itself, with its own message; Ray's remote traceback is its ``__cause__``.
    """
    remote = ray.remote(fn).options(num_cpus=num_cpus, max_retries=0)
    with progress(total=1, desc=desc, unit="step") as bar:
        try:
            result = ray.get(remote.remote(*args))
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, ValueError | LookupError) and not isinstance(cause, ray.exceptions.RayError):
                raise cause from err
            raise
        bar.update(1)
    return result


Commit = Callable[[str, "Sequence[str] | pa.Table"], int]
"""Commits one raw shard's annotated rows, given as its part files or as the rows; returns its rows."""

READ_BLOCK_ROWS = 512
"""Rows per block annotate reads from a raw shard (at least the largest stage ``batch_size``)."""
TASKS_PER_CPU = 2
"""Annotate splits raw shards into row ranges until there are this many read tasks per cluster CPU (a run of
fewer shards than CPUs would otherwise leave cores idle); at scale every shard is one task."""


class _ReadAndRun:
    """Annotate's first op: read a raw shard (or a row range of it) and run the leading task stages on each
    block in the same task. When no stage is left for Ray Data to run, the task also writes the rows: a task
    that owns a whole shard commits it (``commit(shard, rows)``) and returns one summary row with a null path;
    a task with a row range writes part files (``write_parts``) for the driver to commit once the shard is whole.

    One op holding the CPU work keeps a 2-CPU node busy: a separate read op keeps its share of the CPUs reserved
    by Ray Data's resource allocator while it waits for the stages, and blocks crossing the object store cost a
    scheduling round trip each (~0.2 s on a quiet 2-core node against ~0.5 s of work on 512 rows)."""

    def __init__(
        self, run_dir: str, chunk_rows: int, stages: Sequence[Stage], parts_dir: str | None, commit: Commit | None
    ) -> None:
        self.run_dir, self.chunk_rows, self.parts_dir, self.commit = run_dir, chunk_rows, parts_dir, commit
        self.stages = [task_stage(stage, prepare=None) for stage in stages]

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        from curate.annotated import write_parts

        for item in batch.to_pylist():
            blocks = self._annotated(item)
            if self.parts_dir is None:
                yield from blocks
            elif self.commit is not None and item["parts"] == 1:
                yield self._commit_whole(item["shard"], item["rows"], blocks)
            else:
                yield from (write_parts(block.drop_columns(["image"]), self.parts_dir) for block in blocks)

    def _annotated(self, item: dict[str, Any]) -> Iterator[pa.Table]:
        for block in read_shard(self.run_dir, item["shard"], self.chunk_rows, item["part"], item["parts"]):
            for stage in self.stages:
                block = stage(block)
            yield block

    def _commit_whole(self, shard: str, expected: int, blocks: Iterator[pa.Table]) -> pa.Table:
        from curate.annotated import SUMMARY

        table = pa.concat_tables([b.drop_columns(["image"]) for b in blocks], promote_options="default")
        if len(table) != expected:
            raise RuntimeError(short_shard(shard, len(table), expected))
        assert self.commit is not None
        rows = self.commit(shard, table)
        return pa.table({"shard": [shard], "rows": [rows], "path": [None]}, schema=SUMMARY)


def short_shard(shard: str, got: int, want: int) -> str:
    """The error for a raw shard whose annotated rows do not match its input (a stage that drops rows)."""
    return f"annotate: raw shard {shard} gave {got} rows, its input has {want}"


def read_tasks(shards: Sequence[str], cpus: float) -> list[dict[str, Any]]:
    """One read task per raw shard, or per row range of it when there are fewer than ``TASKS_PER_CPU`` x
    ``cpus`` shards."""
    parts = max(1, -(-int(TASKS_PER_CPU * cpus) // max(1, len(shards))))
    return [{"shard": s, "part": i, "parts": parts} for s in shards for i in range(parts)]


def torch_threads(num_cpus: float) -> int:
    """Threads for an actor's torch: its CPUs, at least one. Ray sets ``OMP_NUM_THREADS`` to an actor's CPUs only
    when the environment has none: a driver started with ``OMP_NUM_THREADS=1`` (as a benchmark sets it) left
    every model actor on one thread whatever its ``num_cpus``."""
    return max(1, int(num_cpus))


WORKER_STAGES: dict[str, Stage] = {}
"""Stages set up in this worker process, by the token of the pipeline that shipped them: a task's stage can
arrive unpickled (nothing set up) with each task, and would then load its model once per block."""
WORKER_STAGES_KEPT = 8
"""Pipelines whose stages a worker keeps set up (a long-lived worker serves run after run)."""


class _TaskStage:
    """A stage without a model, or a stage's CPU half (``prepare``), as a task function set up once per worker.

    ``prepare`` is True for the CPU half alone, False for the stage alone, None for both on one worker copy (its
    ``prepare`` first, when it has one), in batches of the stage's ``batch_size``."""

    def __init__(self, stage: Stage, prepare: bool | None) -> None:
        self.stage, self.prepare, self.token = stage, prepare, uuid.uuid4().hex

    def __call__(self, batch: pa.Table) -> pa.Table:
        stage = worker_stage(self.token, self.stage)
        if self.prepare is not None:
            return stage.prepare(batch) if self.prepare else stage(batch)
        size, outs = stage.config.batch_size, []
        for start in range(0, len(batch), size):
            part = batch.slice(start, size)
            outs.append(stage(stage.prepare(part) if stage.runs_prepare() else part))
        return pa.concat_tables(outs) if len(outs) != 1 else outs[0]


def task_stage(stage: Stage, prepare: bool | None) -> _TaskStage:
    """``stage`` (or its ``prepare``, see :class:`_TaskStage`) as a task function that Ray Data names after it
    (``MapBatches(ImageSignals)``)."""
    name = type(stage).__name__ + (".prepare" if prepare else "")
    return type(name, (_TaskStage,), {})(stage, prepare)


def worker_stage(token: str, stage: Stage) -> Stage:
    """This worker's copy of the stage shipped under ``token``: the first one it got, set up once."""
    if token not in WORKER_STAGES:
        while len(WORKER_STAGES) >= WORKER_STAGES_KEPT:
            WORKER_STAGES.pop(next(iter(WORKER_STAGES)))
        WORKER_STAGES[token] = stage
    return WORKER_STAGES[token]


class _StageActor:
    """Holds one stage per actor, so its model is loaded once; torch gets as many threads as the actor has CPUs."""

    def __init__(self, stage_cls: type[Stage], config: Any, num_cpus: float) -> None:
        self.stage = stage_cls(config)
        self.stage.ensure_setup()
        torch = sys.modules.get("torch")  # imported by setup when the stage's model is a torch one
        if torch is not None:
            torch.set_num_threads(torch_threads(num_cpus))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def apply_stage(ds: ray.data.Dataset, stage: Stage) -> ray.data.Dataset:
    """Add ``stage`` to ``ds``: its CPU ``prepare`` as tasks, then tasks or an actor pool."""
    cfg = stage.config
    common = {"batch_format": "pyarrow", "batch_size": cfg.batch_size}
    if stage.runs_prepare():
        ds = ds.map_batches(task_stage(stage, prepare=True), num_cpus=1, **common)
    if not stage.uses_actors:
        return ds.map_batches(task_stage(stage, prepare=False), num_cpus=cfg.num_cpus, **common)
    num_gpus = cfg.num_gpus
    if num_gpus is None:  # auto: one GPU per actor when the cluster has GPUs
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
    num_cpus = cfg.num_cpus if not num_gpus else 0.5 * cfg.num_cpus
    return ds.map_batches(
        _StageActor,
        fn_constructor_args=(type(stage), cfg, num_cpus),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.actors),
        num_gpus=num_gpus or None,
        num_cpus=num_cpus,
        # SPREAD puts actors on different nodes, and differing remote args keep Ray Data from
        # fusing the upstream CPU tasks (read, decode, resize) into the model actors.
        scheduling_strategy="SPREAD",
        **common,
    )


def run_stage(table: pa.Table, stage: Stage) -> pa.Table:
    """Run one stage on a table through Ray Data, exactly as annotate does (row order may change).

    The table goes in as blocks of the stage's ``batch_size`` rows, so ``prepare`` tasks overlap the model.
    """
    size = stage.config.batch_size
    blocks = [table.slice(i, size) for i in range(0, len(table), size)] or [table]
    refs = apply_stage(ray.data.from_arrow(blocks), stage).to_arrow_refs()
    return pa.concat_tables(ray.get(refs))


def write_parquet(dataset: ray.data.Dataset, folder: str) -> None:
    """Write a Ray Dataset as Parquet files under ``folder`` from Ray's workers (nothing collects on the driver)."""
    fsys, path = storage.arrow_fs(folder)
    dataset.write_parquet(path, filesystem=fsys)


def annotate(
    run_dir: str,
    shards: Sequence[str],
    stages: Sequence[Stage],
    parts_dir: str,
    expected: dict[str, int],
    commit: Commit,
) -> dict[str, int]:
    """Stream raw ``shards`` through ``stages``; commit each shard as soon as all its rows are through.

    A task that read a whole shard and ran every stage commits it itself (``commit(shard, rows)``). Otherwise
    the pipeline's last op writes part files (:func:`curate.annotated.write_parts`) and returns only their
    summaries; this driver tallies rows per shard against ``expected`` (input rows per shard) and runs
    ``commit(shard, part_paths)`` as a Ray task for each complete shard. Memory here is O(shards in flight).
    Returns rows committed per shard. On a failure, shards already complete are committed before it is raised.
    """
    from curate.annotated import write_parts

    todo = [s for s in shards if expected.get(s, 0) > 0]
    if not todo:
        return {}
    chunk = max([READ_BLOCK_ROWS, *(s.config.batch_size for s in stages)])
    lead = next((i for i, s in enumerate(stages) if s.uses_actors), len(stages))
    rest = stages[lead:]
    items = [
        {**item, "rows": expected[item["shard"]]} for item in read_tasks(todo, ray.cluster_resources().get("CPU", 1))
    ]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    read = _ReadAndRun(run_dir, chunk, stages[:lead], None if rest else parts_dir, None if rest else commit)
    ds = ds.map_batches(read, batch_size=1, batch_format="pyarrow")
    if rest:
        # Fused into the read, this cuts its output into blocks of `chunk` rows that leave as they are cut (Ray
        # Data's default gathers 128 MiB: ~8,000 rows of 15 KB images, so the model stages waited for most of a
        # shard). It also keeps the read from being fused into the model stages' CPU tasks.
        ds = ds.repartition(target_num_rows_per_block=chunk)
        for stage in rest:
            ds = apply_stage(ds, stage)
        ds = ds.drop_columns(["image"])
        ds = ds.map_batches(write_parts, fn_kwargs={"parts_dir": parts_dir}, batch_format="pyarrow", batch_size=None)
    committer = _ShardCommitter(commit, expected, len(todo))
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
            committer.add(batch)
        committer.check_finished()
    except Exception as err:
        committer.drain(raise_errors=False)
        cause = input_error(err)
        if cause is None:
            raise
        raise cause from None
    return committer.drain()


class _ShardCommitter:
    """The driver's side of annotate: part summaries in, one commit task per shard once its rows are all there."""

    def __init__(self, commit: Commit, expected: dict[str, int], total: int) -> None:
        self.commit = commit
        self.remote = ray.remote(_call).options(num_cpus=0.5, max_retries=1)
        self.expected, self.rows = expected, dict.fromkeys(expected, 0)
        self.parts: dict[str, list[str]] = {}
        self.pending: dict[Any, str] = {}
        self.done: dict[str, int] = {}
        self.bar = progress(total=total, desc="annotate", unit="shard")

    def add(self, summary: pa.Table) -> None:
        """Tally one batch of part summaries (a null path: a shard its task committed); start the commit of every
        shard it completes."""
        for shard, rows, path in zip(*(summary.column(c).to_pylist() for c in ("shard", "rows", "path")), strict=True):
            self.rows[shard] += rows
            if self.rows[shard] > self.expected[shard]:
                raise RuntimeError(short_shard(shard, self.rows[shard], self.expected[shard]))
            if path is None:
                self.done[shard] = rows
                self.bar.update(1)
                continue
            self.parts.setdefault(shard, []).append(path)
            if self.rows[shard] == self.expected[shard]:
                self.pending[self.remote.remote(self.commit, shard, self.parts.pop(shard))] = shard
        self._collect(timeout=0)

    def check_finished(self) -> None:
        """After the stream: every shard got all its rows (a stage that drops rows would lose samples)."""
        short = {s: (self.rows[s], n) for s, n in self.expected.items() if 0 < n != self.rows[s]}
        if short:
            shard, (got, want) = min(short.items())
            raise RuntimeError(f"{short_shard(shard, got, want)} ({len(short)} short)")

    def _collect(self, timeout: float | None) -> None:
        if not self.pending:
            return
        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        for ref in ready:
            self._finish(ref)

    def _finish(self, ref: Any) -> None:
        shard = self.pending.pop(ref)
        self.done[shard] = ray.get(ref)
        self.bar.update(1)

    def drain(self, raise_errors: bool = True) -> dict[str, int]:
        """Wait for every commit started; returns rows per committed shard."""
        try:
            for ref in list(self.pending):
                try:
                    self._finish(ref)
                except Exception:
                    if raise_errors:
                        raise
        finally:
            self.bar.close()
        return self.done


def _write_parquet(ds: ray.data.Dataset, out_dir: str) -> None:
    """Write ``ds`` as Parquet files into ``out_dir``, a local folder or an object-storage URL."""
    storage.makedirs(out_dir)
    fsys, path = storage.arrow_fs(out_dir)
    ds.write_parquet(path, filesystem=fsys)


def input_error(err: BaseException) -> Exception | None:
    """The :class:`curate.acquire.inputs.InputError` a task raised (e.g. a raw shard that does not match the input),
    with its own one-line message instead of Ray's traceback; None when ``err`` has none."""
    from curate.acquire.inputs import InputError

    stack, seen = [err], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, InputError) and not isinstance(cause, ray.exceptions.RayTaskError):
            return InputError(str(cause).splitlines()[0])  # Ray Data appends its retry advice
        stack += [e for e in (cause, current.__cause__, current.__context__) if isinstance(e, BaseException)]
    return None


def _attach_images(batch: pa.Table, run_dir: str) -> pa.Table:
    images = read_images(batch, run_dir)
    return batch.append_column("image", pa.array([images.get(k) for k in batch.column("key").to_pylist()], pa.binary()))


def enrich(run_dir: str, todo: Sequence[str], rows: int, stage: Stage, out_dir: str) -> None:
    """Run ``stage`` on the ``rows`` rows of the Parquet files ``todo`` (kept samples of one raw shard
    each) with their image bytes re-read from ``raw/``; write ``key`` and the stage's columns to
    ``out_dir``, partitioned by raw shard (``out_dir/raw_shard=NAME/*.parquet``). The driver holds no rows."""
    fsys, paths = storage.arrow_paths(list(todo))
    blocks = max(1, rows // stage.config.batch_size)  # one batch a block: every actor of the pool gets work
    ds = ray.data.read_parquet(paths, filesystem=fsys).repartition(blocks)
    ds = ds.map_batches(
        _attach_images, fn_kwargs={"run_dir": run_dir}, batch_format="pyarrow", batch_size=stage.config.batch_size
    )
    ds = apply_stage(ds, stage).select_columns(["key", "raw_shard", *stage.writes])
    storage.makedirs(out_dir)
    fsys, path = storage.arrow_fs(out_dir)
    ds.write_parquet(path, filesystem=fsys, partition_cols=["raw_shard"])


def _read_call(batch: pa.Table, read: Callable[..., pa.Table], calls: Sequence[tuple]) -> pa.Table:
    return pa.concat_tables([read(*calls[i]) for i in batch.column("call").to_pylist()])


def sort_and_write(
    read: Callable[..., pa.Table],
    read_calls: Sequence[tuple],
    by: list[str],
    rows_per_part: int,
    write: Callable[..., Any],
    write_args: Callable[[int, int], tuple],
    desc: str,
) -> list[Any]:
    """Read a table with one ``read(*args)`` task per call, sort it by ``by`` with Ray Data (range
    partitioned: no process holds every row), cut it into parts of exactly ``rows_per_part`` rows (the
    last may hold fewer) and run ``write(part, *write_args(i, number of parts))`` as one task per part ``i``.

    Returns the results in part order. The driver holds block references and row counts only.
    """
    if not read_calls:
        return []
    ds = ray.data.from_items([{"call": i} for i in range(len(read_calls))], override_num_blocks=len(read_calls))
    ds = ds.map_batches(
        _read_call, fn_kwargs={"read": read, "calls": list(read_calls)}, batch_size=1, batch_format="pyarrow"
    )
    options = ray.data.DataContext.get_current().execution_options
    preserve, options.preserve_order = options.preserve_order, True  # blocks come back in sorted order
    try:
        ordered = ds.sort(by).materialize()
    finally:
        options.preserve_order = preserve
    spans = [
        (entry.ref, *(_span(entry, cut)))
        for bundle in ordered.iter_internal_ref_bundles()
        for entry, cut in zip(bundle.blocks, bundle.slices, strict=True)
    ]
    parts = cut_spans([s for s in spans if s[2] > s[1]], rows_per_part)
    calls = [(write, part, *write_args(i, len(parts))) for i, part in enumerate(parts)]
    return [result for result, _ in run_tasks(_write_part, calls, desc)]


def _span(entry: Any, cut: Any) -> tuple[int, int]:
    if cut is not None:
        return cut.start_offset, cut.end_offset
    if entry.metadata.num_rows is None:
        raise RuntimeError("Ray Data returned a block without a row count")
    return 0, entry.metadata.num_rows


def cut_spans(spans: Sequence[tuple[Any, int, int]], n: int) -> list[list[tuple[Any, int, int]]]:
    """Group ordered ``(block, start, stop)`` row ranges into parts of exactly ``n`` rows (the last may
    hold fewer), splitting ranges where a part ends."""
    parts: list[list[tuple[Any, int, int]]] = []
    current: list[tuple[Any, int, int]] = []
    room = n
    for block, start, stop in spans:
        while start < stop:
            take = min(room, stop - start)
            current.append((block, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                parts.append(current)
                current, room = [], n
    return parts + ([current] if current else [])


def _write_part(write: Callable[..., Any], part: Sequence[tuple[Any, int, int]], *args: Any) -> Any:
    """Fetch this part's rows from their blocks (in order) and hand them to ``write``."""
    from ray.data.block import BlockAccessor

    blocks = ray.get([ref for ref, _, _ in part])
    tables = [BlockAccessor.for_block(b).to_arrow().slice(a, z - a) for b, (_, a, z) in zip(blocks, part, strict=True)]
    return write(pa.concat_tables(tables), *args)


def _train_worker(config: dict) -> None:
    """Ray Train worker: the process group is up (gloo or nccl); run the plain training loop."""
    from curate.train.clip import ClipTrainConfig, train_clip

    summary = train_clip(ClipTrainConfig(**config["cfg"]), config["data"], config["output"], config["resume"])
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float))})


def train_distributed(cfg: dict, data: str, output: str, resume: str | bool, workers: int) -> dict:
    """Train with DDP over ``workers`` Ray Train workers (one GPU each when GPUs exist, else CPU + gloo)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg, "data": data, "output": output, "resume": resume},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="curate-train-clip", storage_path=str(Path(output).resolve() / "ray_train")),
    )
    trainer.fit()
    log = Path(output) / "log.jsonl"  # rank 0's log: Ray Train v2 returns no metrics from fit()
    lines = log.read_text().splitlines() if log.is_file() else []
    return {"workers": workers, **(json.loads(lines[-1]) if lines else {})}
