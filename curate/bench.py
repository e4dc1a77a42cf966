"""``curate bench quality``: judge recipes by the CLIP trained on what they keep (DataComp's test).

Every recipe, plus "no filter" (only the built-in availability check: what cannot be decoded
cannot be trained on), runs on the same URL list; the same CLIP preset then trains on each output
for the same number of samples seen, and each model is evaluated on one held-out eval set
(retrieval recall@1, and zero-shot accuracy when the eval spec names a task).

An eval spec (``configs/eval/*.yaml`` with a ``data`` key) says::

    data: path/to/eval/shards      # WebDataset pairs the models never train on (folder, glob, {a..b})
    zero_shot: shapes              # optional: a zero-shot task file or bundled name
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from curate import config
from curate.acquire.inputs import InputError
from curate.errors import EvalError
from curate.recipe import Recipe, build_recipe, load_recipe

NO_FILTER = "no-filter"


@dataclass
class QualityRow:
    """One recipe's line of the table."""

    recipe: str
    kept: int
    input: int
    kept_fraction: float
    zero_shot_top1: float | None
    retrieval_r1: float
    train_seconds: float


def no_filter(like: Recipe) -> Recipe:
    """The baseline: ``like``'s input and acquisition, the image stage, no policies."""
    data = like.to_dict()
    data.update(name=NO_FILTER, description="Only the availability check.", annotate=["image"], decide=[], enrich=[])
    data["emit"] = {**data["emit"], "llava": False}
    return build_recipe(data, f"{like.source} (no filter)")


class EvalSpec(BaseModel):
    """An eval spec of ``curate bench quality --eval`` (the format of the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field("", description="Free text: what the eval measures.")
    data: str = Field(
        min_length=1, description="Held-out WebDataset shards the models never train on (folder, glob, {a..b})."
    )
    zero_shot: str | None = Field(None, description="A zero-shot task file or bundled name (shapes).")


def read_eval_spec(path: str | Path, overrides: config.Overrides = None) -> dict:
    """``{data, zero_shot}`` from an eval YAML (a path or bundled name) with ``overrides``; raises EvalError."""
    spec = config.load(EvalSpec, "eval", path, overrides, EvalError)
    return spec.model_dump(exclude={"description"})


def bench_quality(
    pool: str | Path,
    recipes: list[str],
    eval_spec: str | Path,
    output: str | Path,
    train_preset: str | Path = "clip-tiny",
    samples: int = 19_200,
    address: str | None = None,
) -> list[QualityRow]:
    """Curate ``pool`` with each recipe (and no filter), train, evaluate; write ``OUTPUT/quality.json`` and a PNG."""
    from curate import runtime

    output = Path(output)
    spec = read_eval_spec(eval_spec)
    loaded = [load_recipe(r) for r in recipes]
    runs = [no_filter(loaded[0]), *loaded]
    names = [NO_FILTER, *(_unique(r.name, i) for i, r in enumerate(loaded))]
    rows = []
    with runtime.session(address):
        for name, recipe in zip(names, runs, strict=True):
            rows.append(_one(name, recipe, pool, output / name, spec, train_preset, samples))
    result = {"pool": str(pool), "eval": spec, "train_preset": str(train_preset), "samples_seen": samples}
    result["rows"] = [asdict(r) for r in rows]
    (output / "quality.json").write_text(json.dumps(result, indent=2))
    _plot(rows, output / "quality.png")
    return rows


def _unique(name: str, index: int) -> str:
    return f"{index + 1}-{name}"


def _one(name: str, recipe: Recipe, pool, run_dir: Path, spec: dict, preset, samples: int) -> QualityRow:
    from curate.run import run_pipeline
    from curate.train.clip import ClipTrainConfig, train_clip
    from curate.train.eval import evaluate_clip

    steps = run_pipeline(recipe, pool, run_dir).funnel["steps"]
    if not steps["kept"]:
        raise InputError(f"recipe {name}: kept nothing from {pool}; nothing to train on")
    cfg = ClipTrainConfig.from_yaml(preset)
    cfg = ClipTrainConfig.from_yaml(preset, {"steps": max(1, samples // cfg.batch_size), "epochs": None})
    start = time.perf_counter()
    train_clip(cfg, str(run_dir / "shards"), run_dir / "model")
    seconds = time.perf_counter() - start
    metrics = evaluate_clip(str(run_dir / "model"), spec["data"], spec["zero_shot"])
    retrieval = metrics["retrieval"]
    r1 = (retrieval["image_to_text_R@1"] + retrieval["text_to_image_R@1"]) / 2
    top1 = metrics["zero_shot"]["top1"] if "zero_shot" in metrics else None
    kept, total = steps["kept"], steps["input"]
    return QualityRow(name, kept, total, kept / total, top1, r1, round(seconds, 1))


def quality_table(rows: list[QualityRow]) -> tuple[list[str], list[tuple]]:
    """(column names, one tuple per recipe) for printing."""
    columns = ["recipe", "kept", "kept fraction", "zero-shot top-1", "retrieval R@1", "train s"]
    table = [
        (
            r.recipe,
            r.kept,
            f"{r.kept_fraction:.3f}",
            "-" if r.zero_shot_top1 is None else f"{r.zero_shot_top1:.3f}",
            f"{r.retrieval_r1:.3f}",
            r.train_seconds,
        )
        for r in rows
    ]
    return columns, table


def _plot(rows: list[QualityRow], path: Path) -> Path:
    """Grouped bars: zero-shot top-1 and retrieval R@1 per recipe."""
    from curate.report.plots import bar_chart

    series = {"retrieval R@1": [r.retrieval_r1 for r in rows]}
    if all(r.zero_shot_top1 is not None for r in rows):
        series = {"zero-shot top-1": [r.zero_shot_top1 for r in rows], **series}
    return bar_chart(
        [r.recipe for r in rows], series, "Models trained on each recipe's output", ("recipe", "score"), path
    )
