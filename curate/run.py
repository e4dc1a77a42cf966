"""The steps of one run directory: acquire → annotate → decide → emit, each recorded in the manifest.

``run_pipeline`` is what ``curate run`` calls; ``redecide`` is ``curate decide``. Steps are
idempotent: acquire skips complete shards, annotate skips raw shards already annotated with the same
stage settings, decide and emit always re-run (they are cheap) and replace their outputs atomically.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import fsspec

import curate
from curate import annotated, runtime, storage
from curate.acquire import staging
from curate.acquire.download import RETRIED, ShardLayout, complete_shards, retryable_keys
from curate.acquire.existing import check_input, detect_format, stage_existing
from curate.acquire.existing import stage_inputs as stage_existing_shards
from curate.acquire.inputs import InputError
from curate.acquire.raw import shard_names
from curate.decide import decide, shard_of
from curate.decide.urls import acquire_blocklist
from curate.emit.run import emit as emit_run
from curate.enrich import store as enrich_store
from curate.enrich.recaption import cache_key
from curate.lock import LOCK_NAME, RunLock
from curate.manifest import STEPS, Manifest, versions
from curate.reasons import REASONS
from curate.recipe import Recipe, RecipeError, build_recipe
from curate.report.html import write_report
from curate.report.stats import funnel


@dataclass
class RunResult:
    """Where a run's outputs are and what happened."""

    run_dir: str
    funnel: dict
    manifest: dict


OUTPUT_FOLDERS = (
    "input",
    "input_table",
    "raw",
    "samples",
    "embeddings",
    "decisions",
    "enrich",
    "shards",
    "metadata",
    "llava",
    "report",
)
"""What curate writes inside a run directory, besides ``manifest.json``, ``curate.lock`` and ``.tmp/``."""


def run_pipeline(
    recipe: Recipe,
    input_path: str | Path | Sequence[str | Path],
    run_dir: str | Path,
    address: str | None = None,
    until: str = "emit",
    retry_failed: Sequence[str] | None = None,
) -> RunResult:
    """Run the steps of ``recipe`` up to ``until`` on the URL list at ``input_path`` into ``run_dir``.

    ``retry_failed``: reason codes (see :data:`curate.acquire.download.RETRIED`) whose failed downloads are tried
    again in shards already complete (:func:`acquire_retry`). Holds the run directory's writer lock
    (:class:`curate.lock.RunLock`) throughout.
    """
    if until not in STEPS:
        raise InputError(f"--until {until!r}: choose one of {', '.join(STEPS)}")
    retry = check_retry_reasons(retry_failed) if retry_failed is not None else ()
    run_dir = str(run_dir)
    storage.configure(recipe.storage_options)  # before any storage call; runtime.session hands them to workers
    prepare_run_dir(run_dir)
    with RunLock(run_dir):
        clean_leftovers(run_dir)
        manifest = Manifest(run_dir)
        manifest.data.update(recipe=recipe.to_dict(), recipe_source=recipe.source, versions=versions())
        manifest.data["input"] = str(input_path) if isinstance(input_path, str | Path) else [str(p) for p in input_path]
        preflight(recipe)
        fmt = input_format(input_path, recipe.input.format)
        layout = None
        if fmt == "urls":
            layout = stage_inputs(recipe, input_path, run_dir, manifest)  # a small list: before Ray starts
        else:
            check_input(fmt, str(input_path))  # its shards listed before Ray starts
        with runtime.session(address):
            if fmt == "urls":
                layout = layout or stage_inputs(recipe, input_path, run_dir, manifest, runtime.run_tasks)
            else:
                stage_existing_inputs(recipe, fmt, str(input_path), run_dir, manifest)
            if layout is None:  # already-downloaded input (curate.acquire.existing): nothing to download
                skip_acquire(run_dir, manifest, retry)
            else:
                acquire(recipe, layout, run_dir, manifest)
                if retry:
                    acquire_retry(recipe, layout, run_dir, manifest, retry)
            if until == "acquire":
                return RunResult(run_dir, {}, manifest.data)
            annotate(recipe, run_dir, manifest)
            if until == "annotate":
                return RunResult(run_dir, {}, manifest.data)
            return decide_and_emit(recipe, run_dir, manifest, until)


def redecide(run_dir: str | Path, overrides: list[str] | None = None, address: str | None = None) -> RunResult:
    """Re-run decide and emit from stored signals with the run's recipe plus ``overrides``."""
    from curate.recipe import apply_overrides

    run_dir = str(run_dir)
    if not is_run(run_dir):
        raise InputError(f"{run_dir}: not a curate run directory (no manifest.json)")
    with RunLock(run_dir):
        clean_leftovers(run_dir)
        manifest = Manifest(run_dir)
        if not manifest.done("annotate"):
            raise InputError(f"{run_dir}: annotate has not finished; run `curate run` to complete it first")
        data = json.loads(json.dumps(manifest.data["recipe"]))
        apply_overrides(data, overrides, manifest.data.get("recipe_source", "<recipe>"))
        recipe = build_recipe(data, manifest.data.get("recipe_source", "<recipe>"))
        manifest.data["recipe"] = recipe.to_dict()
        with runtime.session(address):
            return decide_and_emit(recipe, run_dir, manifest)


def preflight(recipe: Recipe) -> None:
    """Every stage's models resolve and their weights are at hand, before anything is downloaded."""
    for section, stages in (("annotate", recipe.annotate), ("enrich", recipe.enrich)):
        for i, stage in enumerate(stages):
            try:
                stage.check()
            except (OSError, RuntimeError, ValueError) as err:
                raise RecipeError(f"{recipe.source}: {section}[{i}] (stage {stage.name!r}): {err}") from None


def is_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` is a curate run directory (it has a manifest, or a writer's lock file)."""
    return storage.isfile(storage.join(run_dir, "manifest.json")) or storage.isfile(storage.join(run_dir, LOCK_NAME))


def prepare_run_dir(run_dir: str | Path) -> None:
    """Create ``run_dir``, or check that it is a curate run: a non-empty folder curate did not make is
    refused, so nothing of the user's is ever overwritten or deleted."""
    if storage.entries(run_dir) and not is_run(run_dir):
        raise InputError(
            f"{run_dir} is not empty and is not a curate run (no manifest.json). curate writes only into a "
            "new or empty folder, or resumes its own run: choose another --output."
        )
    check_writable(run_dir)


def check_writable(run_dir: str | Path) -> None:
    """Fail early, with the path, when the output directory cannot be written."""
    try:
        storage.makedirs(run_dir)
        probe = storage.join(run_dir, f".write-test-{uuid.uuid4().hex[:6]}")
        with fsspec.open(probe, "wb") as f:
            f.write(b"ok")
        storage.rm(probe)
    except (OSError, ValueError) as err:
        raise InputError(f"{run_dir}: output directory is not writable ({err}). Choose another --output.") from None


TEMP_FILE = re.compile(r"\.tmp-[0-9a-f]{8}$")
"""How :class:`curate.io.AtomicFile` names a file it has not committed yet."""

REPORT_TMP_GRACE_S = 600
"""``curate report`` needs no lock: its temp folder is left alone while it may still be in use."""


def clean_leftovers(run_dir: str | Path) -> list:
    """Delete what a killed writer left half-done: ``RUN/.tmp/*``, uncommitted temp files, and the temp
    folders of unfinished download shards. Called with the writer lock held; returns what it removed."""
    if not storage.is_local(run_dir):
        return _clean_remote(str(run_dir))
    run_dir = Path(storage.local_path(run_dir))
    removed = []
    tmp = run_dir / ".tmp"
    now = time.time()
    for entry in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        if entry.name.startswith("report-") and now - entry.stat().st_mtime < REPORT_TMP_GRACE_S:
            continue
        removed.append(entry)
    raw = run_dir / "raw"
    removed += [p for p in raw.glob(".*-*") if p.is_dir()] if raw.is_dir() else []
    for folder in (run_dir, *(run_dir / name for name in OUTPUT_FOLDERS)):
        if folder.is_dir():
            removed += [p for p in folder.iterdir() if TEMP_FILE.search(p.name) or p.name.endswith(".parquet.tmp")]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def _clean_remote(run_dir: str) -> list[str]:
    """:func:`clean_leftovers` on object storage: temp prefixes (a report's too: no mtime to spare it) and temp files."""
    removed = list(storage.entries(storage.join(run_dir, ".tmp")))
    for folder in (run_dir, *(storage.join(run_dir, name) for name in OUTPUT_FOLDERS)):
        removed += [
            p for p in storage.entries(folder) if TEMP_FILE.search(storage.name(p)) or p.endswith(".parquet.tmp")
        ]
    for path in removed:
        storage.rm(path)
    return removed


def stage_inputs(
    recipe: Recipe,
    input_path: str | Path | Sequence[str | Path],
    run_dir: str,
    manifest: Manifest,
    run_tasks: Callable | None = None,
) -> ShardLayout | None:
    """Write ``RUN/input/{shard}.parquet`` (keys assigned) or check that a resumed run has the same input.

    A list larger than ``input.driver_max_bytes`` is read by ``run_tasks`` (:func:`curate.runtime.run_tasks`);
    without them it is left for later (None).
    """
    cfg, per = recipe.input, recipe.acquire.samples_per_shard
    staged = staging.stage_urls(input_path, cfg, per, run_dir, manifest.data, run_tasks)
    if staged is None:
        return None
    manifest.data["input_format"] = "urls"
    _record_inputs(staged[1], run_dir, manifest)
    return staged[0]


def stage_existing_inputs(recipe: Recipe, fmt: str, input_path: str, run_dir: str, manifest: Manifest) -> None:
    """Stage an already-downloaded input (an img2dataset folder or WebDataset tars, see :mod:`curate.acquire.existing`):
    its shards become the run's raw shards, read in place. Needs Ray (tars are indexed by tasks)."""
    extra = list(recipe.input.save_additional_columns)
    raw = storage.join(run_dir, "raw")
    shards = stage_existing(fmt, input_path, raw, runtime.run_tasks)
    folder = staging.input_target(run_dir, manifest.data)
    staged = stage_existing_shards(fmt, raw, shards, extra, input_path, folder, runtime.run_tasks)
    manifest.data["input_format"] = fmt
    _record_inputs(staged, run_dir, manifest)


def input_format(input_path: str | Path | Sequence[str | Path], declared: str) -> str:
    """``urls`` for URL lists (several ``--input`` are always lists), else :func:`curate.acquire.existing.detect_format`."""
    if not isinstance(input_path, str | Path):
        return "urls" if declared == "auto" else declared
    return detect_format(str(input_path), declared)


def _record_inputs(staged: staging.Staged, run_dir: str, manifest: Manifest) -> None:
    """Record the staged input's fingerprint, or refuse a resumed run whose input differs."""
    staging.check_fingerprint(run_dir, manifest.data, staged)
    manifest.save()


def acquire(recipe: Recipe, layout: ShardLayout, run_dir: str, manifest: Manifest) -> None:
    """Download every shard not yet complete in ``RUN/raw/`` (each task reads its rows from ``RUN/input/``)."""
    raw = storage.join(run_dir, "raw")
    storage.makedirs(raw)
    names = [layout.shard_name(i) for i in range(layout.n_shards)]
    done = complete_shards(raw)
    todo = [i for i, name in enumerate(names) if name not in done]
    extra = list(recipe.input.save_additional_columns)
    with manifest.step("acquire", shards=len(names), shards_downloaded=len(todo)) as record:
        blocked = acquire_blocklist(recipe.decide)  # url_filter applies before any request
        calls = [(i, run_dir, layout, recipe.acquire, extra, blocked) for i in todo]
        results = runtime.run_tasks(staging.acquire_shard, calls, "acquire", recipe.acquire.num_cpus)
        record["nodes"] = sorted({node for _, node in results})
        record["downloaded_ok"] = sum(stats["successes"] for stats, _ in results)


def skip_acquire(run_dir: str, manifest: Manifest, retry: Sequence[str]) -> None:
    """Record that the input's own shards are the raw shards: nothing is downloaded."""
    if retry:
        raise InputError(f"--retry-failed: {run_dir} curates already-downloaded shards; nothing is downloaded again.")
    shards = shard_names(run_dir, set())
    with manifest.step("acquire", shards=len(shards), shards_downloaded=0) as record:
        record["source"] = manifest.data.get("input_format")


def check_retry_reasons(reasons: Sequence[str]) -> tuple[str, ...]:
    """``reasons`` if each is a failure worth another download (:data:`curate.acquire.download.RETRIED`); all of them if empty."""
    for reason in reasons:
        if reason not in REASONS:
            raise InputError(f"--retry-reasons {reason!r}: unknown reason code; retryable ones: {', '.join(RETRIED)}")
        if reason not in RETRIED:
            raise InputError(
                f"--retry-reasons {reason!r}: not retried, it is a final outcome (a policy refusal or the content); "
                f"retryable reasons: {', '.join(RETRIED)}"
            )
    return tuple(dict.fromkeys(reasons)) or RETRIED


def acquire_retry(
    recipe: Recipe, layout: ShardLayout, run_dir: str, manifest: Manifest, reasons: Sequence[str]
) -> None:
    """Download again the rows of complete raw shards whose download failed with one of ``reasons``.

    Complete samples are never requested again. A shard whose rows changed loses its annotate files
    (``samples/``, ``embeddings/``) before its new version is committed, so only it is annotated again and
    no crash can leave signals that miss recovered rows. Annotate is marked stale while this runs; when no
    retried row's outcome changed (no shard was rewritten), annotate's record is restored.
    """
    raw = storage.join(run_dir, "raw")
    plan = {
        name: keys
        for name in sorted(complete_shards(raw))
        if (keys := retryable_keys(storage.join(raw, f"{name}.parquet"), reasons))
    }
    signals = manifest.steps.get("annotate", {}).get("status")
    if plan and signals is not None:
        manifest.steps["annotate"]["status"] = "stale"  # saved as the step below starts
    retried = sum(len(keys) for keys in plan.values())
    with manifest.step("acquire_retry", reasons=list(reasons), shards=len(plan), rows_retried=retried) as record:
        calls = _retry_calls(recipe, layout, run_dir, plan)
        retried_shards = runtime.run_tasks(staging.retry_input_shard, calls, "acquire retry", recipe.acquire.num_cpus)
        results = [r for r, _ in retried_shards]
        for field in ("recovered", "still_failing", "changed"):
            record[field] = sum(r[field] for r in results)
    if plan and signals is not None and record["changed"] == 0:
        manifest.steps["annotate"]["status"] = signals
        manifest.save()


def _retry_calls(recipe: Recipe, layout: ShardLayout, run_dir: str, plan: dict[str, list[str]]) -> list[tuple]:
    """Arguments of :func:`curate.acquire.staging.retry_input_shard` for each shard of ``plan`` (shard name: keys to retry)."""
    blocked = acquire_blocklist(recipe.decide)
    extra = list(recipe.input.save_additional_columns)
    scale = 10**layout.sample_digits  # a key is shard_id * scale + the row's index in its shard
    return [
        (int(name), run_dir, [int(k) % scale for k in failed], layout, recipe.acquire, extra, blocked)
        for name, failed in plan.items()
    ]


def annotate(recipe: Recipe, run_dir: str, manifest: Manifest) -> None:
    """Compute signals into ``RUN/samples/{shard}.parquet`` (+ ``embeddings/``) for every raw shard that has none.

    Each shard is committed as it finishes (:mod:`curate.annotated`), so a killed annotate resumes with
    the unfinished shards and a grown input annotates only its new ones; changed stage settings (not
    resources) re-annotate every shard.
    """
    shards = shard_names(run_dir, complete_shards(storage.join(run_dir, "raw")))
    stages = [{"stage": s.name, **s.config.cache_key()} for s in recipe.annotate]  # resources do not count
    key = {"raw_shards": shards, "stages": stages}
    previous = manifest.steps.get("annotate", {})
    if manifest.done("annotate", **key) and (
        previous.get("layout") != annotated.LAYOUT or set(shards) <= annotated.committed(run_dir)
    ):
        return  # every shard annotated (a run from before per-shard files: as a whole)
    reused = annotated.prune(run_dir, shards, everything=previous.get("stages") != stages)  # before they are recorded
    todo = [s for s in shards if s not in reused]
    fields = {**key, "layout": annotated.LAYOUT, "shards_annotated": len(todo), "shards_reused": len(reused)}
    with manifest.step("annotate", **fields) as record:
        counts = annotated.input_counts(run_dir)
        columns = [c for s in recipe.annotate for c in s.embedding_columns]
        commit = partial(annotated.commit_shard, run_dir=run_dir, embedding_columns=columns)
        parts = storage.join(run_dir, ".tmp", annotated.PARTS)
        runtime.annotate(run_dir, todo, recipe.annotate, parts, {s: counts.get(s, 0) for s in todo}, commit)
        storage.rm(parts)
        record["rows"] = sum(counts.get(s, 0) for s in shards)
        record["models"] = {s.name: s.model_id for s in recipe.annotate if hasattr(s, "model_id")}


def decide_and_emit(recipe: Recipe, run_dir: str, manifest: Manifest, until: str = "emit") -> RunResult:
    """Decide keep/reject for every sample, enrich the kept ones, write the curated shards and the funnel."""
    with manifest.step("decide") as record:
        record["rejected"], record["policies"] = runtime.run_task(_decide, (run_dir, recipe.decide), "decide")
    if until != "decide":
        enrich(recipe, run_dir, manifest)
    if until not in ("decide", "enrich"):
        previous = dict(manifest.steps.get("emit", {}))
        with manifest.step("emit") as record:
            record.update(emit(recipe, run_dir, previous))
    result = runtime.run_task(funnel, (run_dir,), "funnel")
    manifest.data["funnel"] = result
    manifest.save()
    with manifest.step("report") as record:
        record["path"] = str(runtime.run_task(write_report, (run_dir,), "report"))
    return RunResult(run_dir, result, manifest.data)


def _decide(run_dir: str, policies: list) -> tuple[dict[str, int], dict]:
    """Decide over the run's samples (a Ray task: DuckDB's memory is a worker's, not the driver's).

    Returns the rejected counts per reason and what the policies chose (e.g. balance's cap t).
    """
    chosen: dict = {}
    samples = storage.files(storage.join(run_dir, "samples"))
    embeddings = storage.join(run_dir, "embeddings")
    rejected = decide(samples, policies, storage.join(run_dir, "decisions"), embeddings, chosen)
    return rejected, chosen


def enrich(recipe: Recipe, run_dir: str, manifest: Manifest) -> None:
    """Run the enrich stages on kept samples that have no stored result for the same settings.

    Results are kept in ``RUN/enrich/{stage}/{raw_shard}.parquet`` by key (:mod:`curate.enrich.store`),
    so re-deciding captions only the samples newly kept; a change of model or prompt
    (``StageConfig.cache_key``) starts over.
    """
    if not recipe.enrich:
        return
    with manifest.step("enrich") as record:
        for stage in recipe.enrich:
            record[stage.name] = _enrich_stage(stage, run_dir)


def _enrich_stage(stage, run_dir: str) -> dict:
    """Select each raw shard's work in tasks, run the stage on it, merge the results into the shard files."""
    settings = cache_key(stage)
    enrich_store.start(run_dir, stage.name, settings)
    shards = [shard_of(p) for p in storage.files(storage.join(run_dir, "decisions"))]
    samples = storage.files(storage.join(run_dir, "samples"))
    own = {storage.name(p): p for p in samples}  # samples/{raw_shard}.parquet, when annotate writes per shard
    tmp = storage.join(run_dir, ".tmp", f"enrich-{uuid.uuid4().hex[:8]}")
    writes = list(stage.writes)
    calls = [
        (
            run_dir,
            stage.name,
            writes,
            s,
            [own[f"{s}.parquet"]] if f"{s}.parquet" in own else samples,
            f"{tmp}/todo/{s}.parquet",
        )
        for s in shards
    ]
    counts = [n for n, _ in runtime.run_tasks(enrich_store.select_todo, calls, f"{stage.name}: select")]
    todo = [s for s, (n, _) in zip(shards, counts, strict=True) if n]
    processed = sum(n for n, _ in counts)
    if todo:
        runtime.enrich(run_dir, storage.files(f"{tmp}/todo"), processed, stage, f"{tmp}/out")
        folder = enrich_store.folder(run_dir, stage.name)
        merges = [(["key", *writes], f"{tmp}/out/raw_shard={s}", f"{folder}/{s}.parquet") for s in todo]
        runtime.run_tasks(enrich_store.merge, merges, f"{stage.name}: merge")
    storage.rm(tmp)
    enrich_store.finish(run_dir, stage.name, settings)
    reused = sum(done for _, done in counts)
    return {"model": getattr(stage, "model_id", None), "processed": processed, "reused": reused}


def emit(recipe: Recipe, run_dir: str, previous: dict | None = None) -> dict:
    """Write the kept rows in every output format of ``recipe.emit`` (:func:`curate.emit.run.emit`).

    ``previous`` is the manifest's record of the last emit: an old export (e.g. ``llava/``) is removed
    only when that emit wrote it (a folder curate did not write is never deleted).
    """
    enrich = {stage.name: list(stage.writes) for stage in recipe.enrich}
    return emit_run(run_dir, recipe.emit, recipe.caption_policy, enrich, previous or {})


sys.modules[__name__].__class__ = curate.VerbModule  # `curate.run(recipe, input=..., output=...)` is curate.api.run
