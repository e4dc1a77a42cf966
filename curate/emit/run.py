"""Emit a run's kept rows with no rows on the driver: read per samples file, sort, write per shard.

Each samples file's kept rows (:func:`curate.emit.shards.kept_rows`) get a place from a seeded hash
of their key; Ray Data sorts them across the cluster; every cut of ``samples_per_shard`` rows is
written by one task with each selected format (:mod:`curate.emit.formats`); then each format's
``finish`` combines its shards and every format's folder replaces the run's.
"""

from __future__ import annotations

import uuid
from functools import partial

from curate import runtime, storage
from curate.emit.base import Writer
from curate.emit.formats import FORMATS, selected
from curate.emit.shards import ORDER, EmitConfig, kept_schema, ordered_kept_rows, write_shard


def emit(run_dir: str, cfg: EmitConfig, caption_policy: str, enrich: dict[str, list[str]], previous: dict) -> dict:
    """Write every selected format's folder for the kept rows of ``run_dir``, replacing old ones.

    ``enrich``: enrich stage name → the columns it writes (joined by key). ``previous`` is the
    manifest's record of the last emit: a format's folder that emit wrote and is no longer selected is
    removed (a folder curate did not write is never deleted). Returns the manifest's record.
    """
    formats = selected(cfg)
    samples = storage.files(storage.join(run_dir, "samples"))
    schema = kept_schema(samples, run_dir, enrich)
    tmp = storage.join(run_dir, ".tmp", f"emit-{uuid.uuid4().hex[:8]}")
    results = runtime.sort_and_write(
        partial(ordered_kept_rows, seed=cfg.shuffle_seed, schema=schema),
        [(run_dir, f, enrich) for f in samples],
        [ORDER, "key"],
        cfg.samples_per_shard,
        write_shard,
        lambda i, n: (run_dir, tmp, shard_name(i, n), cfg, formats, caption_policy),
        "emit",
    )
    record = {"formats": [f.name for f in formats], "shards": len(results), "samples": sum(n for n, _ in results)}
    calls = [(writer, tmp, cfg, [summaries[i] for _, summaries in results]) for i, writer in enumerate(formats)]
    for finished, _ in runtime.run_tasks(finish, calls, "emit finish"):  # e.g. LLaVA's JSON, streamed in a task
        record |= finished
    for writer in formats:
        storage.commit_dir(writer.root(tmp), storage.join(run_dir, writer.folder))
    for writer in FORMATS.values():
        target = storage.join(run_dir, writer.folder)
        if writer not in formats and writer.wrote(previous) and storage.exists(target):
            storage.rm(target)  # the export of an earlier emit would no longer match
    storage.rm(tmp)
    return record


def shard_name(index: int, count: int) -> str:
    """Emitted shard ``index`` of ``count``: zero-padded to 5 digits, more when there are more shards."""
    return f"{index:0{max(5, len(str(count)))}d}"


def finish(writer: type[Writer], out_dir: str, cfg: EmitConfig, summaries: list[dict]) -> dict:
    """``writer.finish`` (a task: what it streams never passes through the driver)."""
    return writer.finish(out_dir, cfg, summaries)
