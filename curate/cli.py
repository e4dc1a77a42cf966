"""The ``curate`` command line: one typed function per subcommand, callable from Python too."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from curate import reasons as reason_codes
from curate.recipe import RecipeError, load_recipe
from curate.train.cli_eval import eval_clip
from curate.urls import InputError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Data curation for image-text datasets.",
)
console = Console(stderr=True)

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe value: KEY.PATH=VALUE.")]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join (default: embedded)."),
]


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file, or a bundled recipe name (demo, ...).")],
    input: Annotated[Path, typer.Option("--input", help="URL list: Parquet, CSV or JSONL.")],
    output: Annotated[Path, typer.Option("--output", help="Run directory to create or resume.")],
    set: SetOpt = None,
    address: AddressOpt = None,
    until: Annotated[str, typer.Option("--until", help="Stop after this step: acquire, annotate or emit.")] = "emit",
) -> None:
    """Acquire, annotate, decide and emit: the whole pipeline into one run directory."""
    from curate.run import run_pipeline

    result = run_pipeline(load_recipe(recipe, set), input, output, address, until)
    if result.funnel:
        print_funnel(result.funnel)
    console.print(f"outputs: {output}/shards (WebDataset), {output}/metadata (Parquet), {output}/manifest.json")


@app.command()
def decide(
    run_dir: Annotated[Path, typer.Argument(help="An existing run directory.")],
    set: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Re-run decide and emit from stored signals (fast; the way to tune thresholds)."""
    from curate.run import redecide

    print_funnel(redecide(run_dir, set, address).funnel)


@app.command()
def stats(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    sql: Annotated[str | None, typer.Argument(help="SQL over views samples, decisions, kept.")] = None,
    format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    concepts: Annotated[bool, typer.Option("--concepts", help="Concept counts before/after balancing.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="With --concepts: write the long-tail PNG here.")] = None,
) -> None:
    """Query a run with DuckDB; with no SQL, print the funnel."""
    from curate.report.stats import concept_summary, connect, funnel

    if concepts:
        summary = concept_summary(run_dir)
        rows = [(h["concept"], h["before"], h["after"]) for h in summary.pop("head")]
        rows += [(name, v["before"], v["after"]) for name, v in summary.items()]
        print_rows(["concept (head) / summary", "before", "after"], rows, format)
        if plot:
            from curate.report.plots import concept_long_tail

            console.print(f"long-tail plot: {concept_long_tail(run_dir, plot)}")
        return
    if sql is None:
        print_funnel(funnel(run_dir))
        return
    relation = connect(run_dir).sql(sql)
    rows = relation.fetchall()
    print_rows(relation.columns, rows, format)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", help="Run directory.")] = Path("demo-run"),
    n: Annotated[int, typer.Option("--n", help="Clean pairs in the generated corpus.")] = 300,
    address: AddressOpt = None,
) -> None:
    """Generate a small web corpus, serve it on 127.0.0.1, and run pipelines/demo.yaml on it."""
    from curate.demo.corpus import build_corpus
    from curate.demo.server import LoopbackServer, write_url_list
    from curate.run import run_pipeline

    objects, rows = build_corpus(n_clean=n)
    with LoopbackServer(objects) as server:
        urls = write_url_list(rows, server.base_url, output / "demo_urls.parquet")
        console.print(f"serving {len(objects)} objects on {server.base_url}; {len(rows)} URLs in {urls}")
        result = run_pipeline(load_recipe("demo"), urls, output, address)
    print_funnel(result.funnel)
    console.print(f"curated shards: {output}/shards  metadata: {output}/metadata  manifest: {output}/manifest.json")
    console.print(f'explore: curate stats {output} "SELECT reason, count(*) FROM decisions GROUP BY 1"')


train_app = typer.Typer(no_args_is_help=True, help="Train models on curated shards.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate trained models.")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
eval_app.command("clip")(eval_clip)


@train_app.command("clip")
def train_clip(
    config: Annotated[Path, typer.Option("--config", help="Preset YAML, e.g. configs/train/clip-tiny.yaml.")],
    data: Annotated[str, typer.Option("--data", help="Shards: RUN/shards, a glob or a {a..b} pattern.")],
    output: Annotated[Path, typer.Option("--output", help="Folder for checkpoints, log and the final model.")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="DDP processes via Ray Train (1: this process).")] = 1,
    set: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Contrastive (CLIP) training: open_clip model + loss, WebDataset streaming, warmup + cosine."""
    import yaml

    from curate.train.clip import ClipTrainConfig
    from curate.train.clip import train_clip as train

    overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in set or [])}
    cfg = ClipTrainConfig.from_yaml(config, overrides)
    if workers > 1:
        from curate import runtime

        with runtime.session(address):
            summary = runtime.train_distributed(cfg.model_dump(), data, str(output), resume, workers)
    else:
        summary = train(cfg, data, output, resume)
    print_rows(["metric", "value"], sorted(summary.items()), "table")


concepts_app = typer.Typer(no_args_is_help=True, help="Concept vocabularies for balancing.")
app.add_typer(concepts_app, name="concepts")


@concepts_app.command("build")
def concepts_build(
    vocabulary: Annotated[
        str | None,
        typer.Option("--vocabulary", help="Text (one per line) or Parquet (`concept`); default WordNet/timm."),
    ] = None,
) -> None:
    """Build the vocabulary's matching automaton once and cache it (stages then load it in ~0.2 s)."""
    from curate.concepts import cached_automaton
    from curate.io import cache_dir

    _, entries = cached_automaton(vocabulary)
    console.print(f"{len(entries):,} concepts compiled; cache: {cache_dir('concepts')}")


@app.command()
def reasons() -> None:
    """List the rejection reason codes and what each means."""
    print_rows(["reason", "meaning"], list(reason_codes.REASONS.items()), "table")


def print_funnel(result: dict) -> None:
    """Print the funnel: step counts, then rejected counts per reason."""
    steps = result["steps"]
    total = steps["input"] or 1
    rows = [(name, n, f"{100 * n / total:.1f}%") for name, n in steps.items()]
    rows += [(f"  rejected: {reason}", n, f"{100 * n / total:.1f}%") for reason, n in result["rejected"].items()]
    print_rows(["funnel", "rows", "of input"], rows, "table")


def print_rows(columns: list[str], rows: list, fmt: str) -> None:
    """Print rows as a rich table, CSV or JSON lines."""
    if fmt == "json":
        for row in rows:
            sys.stdout.write(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n")
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "table":
        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        Console().print(table)
    else:
        raise typer.BadParameter(f"--format {fmt!r}: use table, csv or json")


def main() -> None:
    """Entry point: recipe and input problems print one clear line and exit 2."""
    try:
        app()
    except (RecipeError, InputError) as err:
        console.print(f"[red]error:[/red] {err}")
        sys.exit(2)


if __name__ == "__main__":
    main()
