"""Where a run stands, from its ``manifest.json``: a row per step, and what to do next.

The manifest is rewritten whenever a step starts or ends, so this works on a running run, an
interrupted one (a step left ``running``) and a failed one (a step ``failed`` with its error).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from curate import storage
from curate.lock import describe, holder
from curate.manifest import STEPS
from curate.report.stats import Rows

BOOKKEEPING = {
    "status",
    "started",
    "finished",
    "seconds",
    "executions",
    "error",
    "stages",
    "raw_shards",
    "nodes",
    "models",
    "policies",
}
"""Step fields that are not counts."""


def step_order() -> tuple[str, ...]:
    """The steps of a run, in order, the report last."""
    return (*STEPS, "report")


def step_rows(manifest: dict, order: Sequence[str] = ()) -> Rows:
    """One row per step (those in ``order`` first, started or not): status, start, seconds, counts."""
    steps = manifest.get("steps", {})
    rows = []
    for name, state in states(manifest, order).items():
        record = steps.get(name)
        if record is None:
            rows.append((name, state, "", "", ""))
        else:
            rows.append((name, state, record.get("started", ""), _seconds(record), counts(record)))
    return Rows(["step", "status", "started", "seconds", "counts"], rows)


def states(manifest: dict, order: Sequence[str] = ()) -> dict[str, str]:
    """Each step's status. A step the manifest lacks is ``skipped`` when the recipe's section for it is
    empty (e.g. no enrich stages) or a later step started, else ``not started``."""
    steps, recipe = manifest.get("steps", {}), manifest.get("recipe", {})
    names = list(dict.fromkeys([*order, *steps]))
    found = {}
    for i, name in enumerate(names):
        if name in steps:
            found[name] = steps[name].get("status", "?")
        elif recipe.get(name) == [] or any(later in steps for later in names[i + 1 :]):
            found[name] = "skipped"
        else:
            found[name] = "not started"
    return found


def counts(record: dict) -> str:
    """A step's numeric fields as ``name=value`` (dicts of counts summed; a stage's numbers as ``stage.field``)."""
    parts = []
    for name, value in record.items():
        if name in BOOKKEEPING or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            parts.append(f"{name}={value:,}")
        elif isinstance(value, dict) and value and all(isinstance(v, int) for v in value.values()):
            parts.append(f"{name}={sum(value.values()):,}")
        elif isinstance(value, dict):
            parts += [
                f"{name}.{k}={v:,}" for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)
            ]
    return " ".join(parts)


def _seconds(record: dict) -> str:
    if "seconds" in record:
        return f"{record['seconds']:.1f}"
    try:
        started = time.mktime(time.strptime(record["started"], "%Y-%m-%dT%H:%M:%S%z"))
    except (KeyError, ValueError):
        return ""
    return f"{time.time() - started:.0f} so far"


def where_it_stands(run_dir: str | Path, manifest: dict, order: Sequence[str] = ()) -> list[str]:
    """Plain sentences: complete, running, failed (with the error) or stopped, and the command that resumes."""
    steps = manifest.get("steps", {})
    state = states(manifest, order)
    report = storage.join(run_dir, "report", "report.html")
    if "report" in state and state["report"] != "running":
        # runs made before the report was a step have the file only; a deleted report is not written
        state["report"] = (
            "done" if storage.isfile(report) else ("failed" if state["report"] == "failed" else "not started")
        )
    failed = [n for n, st in state.items() if st == "failed"]
    running = [n for n, st in state.items() if st == "running"]
    missing = [n for n, st in state.items() if st in ("not started", "stale")]  # stale: inputs changed since
    lines = []
    for name in failed:
        lines.append(f"step {name} FAILED: {steps.get(name, {}).get('error', 'no error recorded')}")
    owner = holder(run_dir) if running else None
    for name in running:
        since = f"since {steps[name].get('started', '?')} (manifest updated {manifest.get('updated', '?')})"
        if owner is not None:
            lines.append(f"step {name} is RUNNING {since}, written by {describe(owner)}.")
        else:
            lines.append(f"step {name} was INTERRUPTED: running {since}, but no process holds the run's lock.")
    if owner is not None:
        return lines
    if not (failed or running or missing):
        return ["complete: every step finished."]
    if not (failed or running):
        lines.append(f"stopped before {missing[0]} ({state[missing[0]]}).")
    only_report = set(failed + running + missing) == {"report"}
    lines.append(f"resume with: {f'curate report {run_dir}' if only_report else resume_command(run_dir, manifest)}")
    return lines


def resume_command(run_dir: str | Path, manifest: dict) -> str:
    """``curate decide RUN`` once annotate is done (it uses the run's exact recipe), else ``curate run ...``."""
    if manifest.get("steps", {}).get("annotate", {}).get("status") == "done":
        return f"curate decide {run_dir}"
    source = manifest.get("recipe_source", "RECIPE")
    command = f"curate run {source} --input {manifest.get('input', 'URLS')} --output {run_dir}"
    if _recipe_changed(source, manifest.get("recipe")):
        command += "  (with the --set options of the first command: the run's recipe differs from the file)"
    return command


def _recipe_changed(source: str, recipe: dict | None) -> bool:
    from curate.recipe import RecipeError, load_recipe

    try:
        return recipe is not None and load_recipe(source).to_dict() != recipe
    except (RecipeError, OSError):
        return True
