"""``curate eval clip``: mounted in :mod:`curate.cli` with ``eval_app.command("clip")(eval_clip)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from curate.console import console, print_rows


def eval_clip(
    ckpt: Annotated[
        str,
        typer.Argument(
            help="Model folder written by `curate train clip`, a config name (clip-tiny) or an open_clip arch."
        ),
    ],
    data: Annotated[str, typer.Option("--data", help="WebDataset shards: a folder, a glob or a {a..b} pattern.")],
    zero_shot: Annotated[
        str | None,
        typer.Option("--zero-shot", help="Zero-shot task YAML, or a name in configs/eval/ (shapes)."),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option("--pretrained", help="Checkpoint file or open_clip tag (not for a folder)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pairs per batch.")] = 64,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate only the first N pairs.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    output: Annotated[
        Path | None,
        typer.Option("--output", help="JSON file [default: CKPT/eval.json for a folder, else eval.json]."),
    ] = None,
    set: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY.PATH=VALUE", help="Override a value of the zero-shot task (YAML value)."),
    ] = None,
) -> None:
    """Image-text retrieval recall@k (and zero-shot accuracy) of a CLIP on WebDataset shards."""
    from curate.errors import EvalError, NotFound
    from curate.train.eval import evaluate_clip, flatten_metrics, load_task

    if set and not zero_shot:
        raise EvalError(f"--set {set[0]!r}: it overrides the zero-shot task, so give --zero-shot TASK too")
    task = load_task(zero_shot, set) if zero_shot else None  # a bad task fails before any embedding
    try:
        result = evaluate_clip(ckpt, data, task, pretrained, batch_size, limit, device)
    except FileNotFoundError as err:  # a model or shard path the user gave
        raise NotFound(str(err)) from None
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in flatten_metrics(result)]
    print_rows(["metric", "value"], rows, "table")
    output = output or (Path(ckpt) / "eval.json" if Path(ckpt).is_dir() else Path("eval.json"))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"metrics: {output}")
