"""The ``curate`` command line: one typed function per subcommand, callable from Python too."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from curate import reasons as reason_codes
from curate import storage
from curate.acquire.inputs import InputError
from curate.console import console, print_rows
from curate.errors import UserError
from curate.recipe import load_recipe
from curate.train.cli_eval import eval_clip

HELP = {"help_option_names": ["-h", "--help"]}  # sub-commands inherit it from the app's context
app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=HELP,
    help="Data curation for image-text datasets.",
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY.PATH=VALUE",
        help="Override a value of the recipe or preset; VALUE is YAML, list entries go by name "
        "(decide.image_size.min_side=128). Repeatable.",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join (default: embedded)."),
]


def _print_version(value: bool) -> None:
    if value:
        from curate import __version__

        typer.echo(f"curate {__version__}")
        raise typer.Exit()


def ray_log_level(quiet: bool, log_level: str | None) -> int | None:
    """The level for Ray's and Ray Data's loggers: ``--log-level``, else ERROR with ``--quiet``, else None (Ray's)."""
    if log_level is None:
        return logging.ERROR if quiet else None
    if log_level.upper() not in LOG_LEVELS:
        raise typer.BadParameter(f"{log_level!r}: use one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
    return getattr(logging, log_level.upper())


@app.callback()
def options(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print curate's version.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Ray and Ray Data log errors only (no INFO blocks, no warnings).")
    ] = False,
    log_level: Annotated[
        str | None, typer.Option("--log-level", metavar="LEVEL", help=f"Ray's log level: {', '.join(LOG_LEVELS)}.")
    ] = None,
) -> None:
    """Data curation for image-text datasets."""
    level = ray_log_level(quiet, log_level)
    if level is not None:
        from curate import runtime

        ctx.with_resource(runtime.log_level(level))


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file, or a bundled recipe name (demo, ...).")],
    input: Annotated[
        list[str],
        typer.Option(
            "--input",
            help="URL list: a file (.parquet .csv .tsv .json .jsonl .txt, optionally .gz/.zst/.bz2), a folder or a "
            "quoted glob, local or s3:// gs:// hf:// http(s)://; repeat --input for several. Or data already "
            "downloaded, curated in place: an img2dataset output folder, or WebDataset tars (folder, glob or brace "
            "pattern); see input.format.",
        ),
    ],
    output: Annotated[str, typer.Option("--output", help="Run directory to create or resume (a path or s3://...).")],
    set: SetOpt = None,
    address: AddressOpt = None,
    until: Annotated[
        str, typer.Option("--until", help="Stop after this step: acquire, annotate, decide, enrich or emit.")
    ] = "emit",
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed", help="Download again the rows whose download failed for a transient reason (resume)."
        ),
    ] = False,
    retry_reasons: Annotated[
        str | None,
        typer.Option(
            "--retry-reasons",
            help="Comma-separated reason codes to retry (implies --retry-failed; default download_timeout,"
            "download_error, where 4xx client errors are not retried).",
        ),
    ] = None,
) -> None:
    """Acquire, annotate, decide and emit: the whole pipeline into one run directory."""
    from curate.run import run_pipeline

    retry = [r.strip() for r in retry_reasons.split(",") if r.strip()] if retry_reasons is not None else None
    retry = [] if retry is None and retry_failed else retry
    inputs = input[0] if len(input) == 1 else input
    result = run_pipeline(load_recipe(recipe, set), inputs, output, address, until, retry)
    if result.funnel:
        print_funnel(result.funnel)
    console.print(f"outputs: {', '.join(existing_outputs(output))}")


OUTPUTS = (
    ("shards", "WebDataset"),
    ("metadata", "Parquet"),
    ("llava", "LLaVA JSON"),
    ("report/report.html", "report"),
    ("decisions", "keep/reject + reason"),
    ("samples", "signals"),
    ("raw", "downloaded shards"),
    ("manifest.json", "steps"),
)


def existing_outputs(run_dir: str | Path) -> list[str]:
    """``PATH (what)`` for each output the run has now: `--until acquire` has no shards to point at."""
    paths = [(storage.join(run_dir, name), what) for name, what in OUTPUTS]
    return [f"{path} ({what})" for path, what in paths if storage.exists(path)]


@app.command()
def decide(
    run_dir: Annotated[str, typer.Argument(help="An existing run directory (a path or s3://...).")],
    set: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Re-run decide and emit from stored signals (fast; the way to tune thresholds)."""
    from curate.run import redecide

    print_funnel(redecide(run_dir, set, address).funnel)


@app.command()
def calibrate(
    run_dir: Annotated[str, typer.Argument(help="A run whose annotate step finished (a path or s3://...).")],
    distinct: Annotated[
        str | None,
        typer.Option(
            "--distinct",
            help="Known-distinct images: a folder of image files, or WebDataset tars (folder, glob or brace "
            "pattern). Default: the sampled run images, one per sha256.",
        ),
    ] = None,
    duplicates: Annotated[
        str | None,
        typer.Option(
            "--duplicates",
            help="Known duplicate pairs of the run's keys: CSV or Parquet with columns key_a,key_b (or key,dup_of). "
            "Default: a near copy (re-encode, resize, crop, watermark, brightness) of each sampled run image.",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=2, help="Run images sampled (and distinct images read).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample and of the near copies.")] = 0,
    max_false_merge: Annotated[
        float,
        typer.Option(
            "--max-false-merge",
            min=0.0,
            max=1.0,
            help="Largest share of the pool a recommended value may merge falsely (extrapolated to the pool's "
            "size). Default 0.01: 1 image in 100 lost to a false merge, a third of the 3.1 % the independent clip-art corpus lost at k = 8.",
        ),
    ] = 0.01,
) -> None:
    """Measure near_dedup.k and semantic_dedup.eps for a run: recall, false merges, precision; the --set to apply."""
    from curate.calibrate import calibrate_run, print_result

    print_result(calibrate_run(run_dir, distinct, duplicates, n, seed, max_false_merge))
    console.print(f"written: {storage.join(run_dir, 'calibration.json')}")


@app.command()
def stats(
    run_dir: Annotated[str, typer.Argument(help="A run directory (a path or s3://...).")],
    sql: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="RUN_OR_SQL",
            help="More run directories to compare, then optional SQL over views samples, decisions, kept "
            "(the last argument, when it is not a directory).",
        ),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    concepts: Annotated[bool, typer.Option("--concepts", help="Concept counts before/after balancing.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="With --concepts: write the long-tail PNG here.")] = None,
    funnel: Annotated[bool, typer.Option("--funnel", help="Rows per step and rejected rows per reason.")] = False,
    languages: Annotated[bool, typer.Option("--languages", help="Rows and kept rows per caption language.")] = False,
    duplicates: Annotated[bool, typer.Option("--duplicates", help="Duplicate clusters by reason and size.")] = False,
    scores: Annotated[bool, typer.Option("--scores", help="CLIP score distribution and thresholds.")] = False,
    heads: Annotated[
        bool, typer.Option("--heads", help="Learned scores (head, score policies): quantiles, cut, rejected.")
    ] = False,
    unsafe_sql: Annotated[
        bool,
        typer.Option(
            "--unsafe-sql",
            help="Let SQL read and write any file (read_csv, COPY ... TO, ATTACH). By default SQL sees only "
            "the run's views and cannot open a file or lift that with SET.",
        ),
    ] = False,
) -> None:
    """Query runs with DuckDB: canned queries or SQL; with neither, print the funnel.

    Several runs print side by side (a column per run) for canned queries, and stacked with a
    `run` column for SQL: `curate stats RUN_A RUN_B --languages`.
    """
    from curate.report.stats import funnel as run_funnel

    if format not in FORMATS:
        raise typer.BadParameter(f"{format!r}: use {', '.join(FORMATS)}", param_hint="--format")
    runs, sql_text = _runs_and_sql(run_dir, sql)
    flags = {"funnel": funnel, "languages": languages, "concepts": concepts, "duplicates": duplicates, "scores": scores}
    flags["heads"] = heads
    wanted = [name for name, on in flags.items() if on]
    if plot and (not concepts or len(runs) > 1):
        raise typer.BadParameter("--plot goes with --concepts and one run")
    if not wanted and sql_text is None:
        if len(runs) == 1 and format == "table":
            print_funnel(run_funnel(run_dir))
            return
        wanted = ["funnel"]
    sections = {name: _canned(name, runs) for name in wanted}
    if sql_text is not None:
        sections["sql"] = _sql(runs, sql_text, sandbox=not unsafe_sql)
    print_sections(sections, format)
    if plot:
        from curate.report.plots import concept_long_tail

        console.print(f"long-tail plot: {concept_long_tail(run_dir, plot)}")


FORMATS = ("table", "csv", "json")


def print_sections(sections: dict[str, tuple[list[str], list]], fmt: str) -> None:
    """Print named results: JSON as one document ``{name: [row objects]}``, else one table or CSV block each."""
    if fmt == "json":
        doc = {name: [dict(zip(cols, row, strict=True)) for row in rows] for name, (cols, rows) in sections.items()}
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
        return
    for name, (columns, rows) in sections.items():
        if fmt == "table" and name != "sql":
            console.print(f"[bold]{name}[/bold]")
        print_rows(columns, rows, fmt)


def _runs_and_sql(run_dir: str | Path, more: list[str] | str | None) -> tuple[list[str], str | None]:
    """Split `stats` arguments into run directories and SQL (the last one, when it is not a directory)."""
    more = [more] if isinstance(more, str) else list(more or [])  # a str from Python callers
    sql = None
    if more and any(c.isspace() for c in more[-1]) and not storage.isdir(more[-1]):
        sql = more.pop()
    runs = [str(run_dir), *map(str, more)]
    for run in runs:
        if not storage.isdir(run):
            raise typer.BadParameter(f"{run}: not a run directory (SQL, if any, goes last)")
    return runs, sql


def _canned(name: str, runs: list[str]) -> tuple[list[str], list]:
    """Canned query ``name`` on one run, or side by side on several; a run that lacks its data exits 1."""
    import duckdb

    from curate.report.stats import CANNED, NotInRun, compare

    try:
        result, notes = (CANNED[name](runs[0]), []) if len(runs) == 1 else compare(runs, CANNED[name])
    except NotInRun as err:
        console.print(f"--{name}: {runs[0]}: {err}" if len(runs) == 1 else f"--{name}: {err}", markup=False)
        raise typer.Exit(1) from None
    except duckdb.Error as err:  # e.g. a column a hand-made or older run lacks
        raise InputError(f"--{name}: {', '.join(runs)}: {_first_line(err)}") from None
    for note in notes:
        console.print(f"--{name}: {note}", markup=False)
    return result.columns, result.rows


def _sql(runs: list[str], sql: str, sandbox: bool = True) -> tuple[list[str], list]:
    """Run SQL on each run; with several runs, rows are stacked with a leading `run` column."""
    from contextlib import closing

    import duckdb

    from curate.report.stats import connect, run_labels

    columns, rows = [], []
    for label, run in zip(run_labels(runs), runs, strict=True):
        with closing(connect(run, sandbox=sandbox)) as con:
            try:
                relation = con.sql(sql)
                if relation is None:  # a statement, not a query (SET, CREATE ...): nothing to print
                    continue
                columns, found = relation.columns, relation.fetchall()
            except duckdb.Error as err:
                raise InputError(_sql_error(run, err, sandbox)) from None
        rows += found if len(runs) == 1 else [(label, *row) for row in found]
    return (columns if len(runs) == 1 else ["run", *columns]), rows


def _first_line(err: Exception) -> str:
    """DuckDB's message on one line: its first line, and its candidate columns when it names some."""
    lines = (str(err).strip() or type(err).__name__).splitlines()
    return " ".join([lines[0], *(line.strip() for line in lines[1:] if line.startswith("Candidate bindings"))])


def _sql_error(run: str, err: Exception, sandbox: bool) -> str:
    """One line for an SQL error: what DuckDB said, and which views there are."""
    import duckdb

    first = _first_line(err)
    hint = "SQL sees views samples, decisions, kept"
    if sandbox and isinstance(err, duckdb.PermissionException | duckdb.InvalidInputException):
        hint += "; it may not open files or change settings (--unsafe-sql lifts that)"
    return f"{run}: SQL failed: {first} ({hint})"


@app.command()
def report(run_dir: Annotated[str, typer.Argument(help="A run directory (a path or s3://...).")]) -> None:
    """Write RUN/report/report.html (self-contained, opens offline) and its PNG plots."""
    from curate.report.html import write_report

    _require_manifest(run_dir)
    console.print(f"report: {write_report(run_dir)}")


@app.command()
def status(
    run_dir: Annotated[str, typer.Argument(help="A run directory, running, interrupted or done (a path or s3://...).")],
) -> None:
    """Where a run stands: each step's status, start, seconds and counts, the funnel, and how to resume."""
    from curate.report.status import step_order, step_rows, where_it_stands

    _require_manifest(run_dir)
    manifest = storage.read_json(storage.join(run_dir, "manifest.json"))
    rows = step_rows(manifest, step_order())
    print_rows(rows.columns, rows.rows, "table")
    if manifest.get("funnel"):
        print_funnel(manifest["funnel"])
    for line in where_it_stands(run_dir, manifest, step_order()):
        typer.echo(line)


def _require_manifest(run_dir: str | Path) -> None:
    if not storage.isfile(storage.join(run_dir, "manifest.json")):
        raise typer.BadParameter(f"{run_dir}: no manifest.json, so not a run directory (or the run never started)")


@app.command()
def demo(
    output: Annotated[
        Path, typer.Option("--output", help="The run directory; the demo adds demo/ (its pairs), clip/ and demo.json.")
    ] = Path("demo-run"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Only hygiene (pipelines/demo.yaml) on generated shapes, in seconds.")
    ] = False,
    corpus: Annotated[
        str, typer.Option("--corpus", help="auto (real emoji pairs when installable), emoji or shapes (generated).")
    ] = "auto",
    size: Annotated[str, typer.Option("--size", help="full (make demo) or tiny (every step, tens of pairs).")] = "full",
    n: Annotated[int, typer.Option("--n", help="With --quick: clean pairs in the generated corpus.")] = 300,
    address: AddressOpt = None,
) -> None:
    """The whole mission on a small corpus served on 127.0.0.1: filter, dedup, balance, recaption, train, eval."""
    if quick:
        quick_demo(output, n, address)
        return
    from curate.demo.mission import FULL, TINY, print_summary, run_mission

    if corpus not in ("auto", "emoji", "shapes") or size not in ("full", "tiny"):
        raise typer.BadParameter(f"--corpus {corpus!r} --size {size!r}: use auto/emoji/shapes and full/tiny")
    print_summary(run_mission(output, FULL if size == "full" else TINY, corpus, address))


def quick_demo(output: Path, n: int, address: str | None) -> None:
    """Generate a small web corpus, serve it on 127.0.0.1, and run pipelines/demo.yaml on it."""
    from curate.demo.corpus import build_corpus
    from curate.demo.server import LoopbackServer, previous_port, write_url_list
    from curate.manifest import Manifest
    from curate.run import is_run, prepare_run_dir, run_pipeline

    prepare_run_dir(output)
    if not is_run(output):
        Manifest(output).save()  # the folder is a run from here on: its URL list is written into it
    objects, rows = build_corpus(n_clean=n)
    urls = output / "demo_urls.parquet"
    with LoopbackServer(objects, port=previous_port(urls)) as server:  # same URLs: the run resumes
        urls = write_url_list(rows, server.base_url, urls)
        console.print(f"serving {len(objects)} objects on {server.base_url}; {len(rows)} URLs in {urls}")
        result = run_pipeline(load_recipe("demo"), urls, output, address)
    print_funnel(result.funnel)
    console.print(f"curated shards: {output}/shards  metadata: {output}/metadata  manifest: {output}/manifest.json")
    console.print(f"report: {output}/report/report.html  LLaVA export: {output}/llava")
    console.print(f'explore: curate stats {output} "SELECT reason, count(*) FROM decisions GROUP BY 1"')


train_app = typer.Typer(no_args_is_help=True, help="Train models on curated shards.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate trained models.")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
eval_app.command("clip")(eval_clip)


@train_app.command("clip")
def train_clip(
    config: Annotated[
        Path, typer.Option("--config", help="Preset YAML or bundled preset: clip-tiny, lit-offline, vit-b-32.")
    ],
    data: Annotated[str, typer.Option("--data", help="Shards: RUN/shards, a glob or a {a..b} pattern.")],
    output: Annotated[Path, typer.Option("--output", help="Folder for checkpoints, log and the final model.")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="DDP processes via Ray Train (1: this process).")] = 1,
    set: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Contrastive (CLIP) training: open_clip model + loss, WebDataset streaming, warmup + cosine."""
    from curate.train.clip import ClipTrainConfig
    from curate.train.clip import train_clip as train

    cfg = ClipTrainConfig.from_yaml(config, set)
    if workers > 1:
        from curate import runtime

        with runtime.session(address):
            summary = runtime.train_distributed(cfg.model_dump(), data, str(output), resume, workers)
    else:
        summary = train(cfg, data, output, resume)
    print_rows(["metric", "value"], sorted(summary.items()), "table")


@train_app.command("llava")
def train_llava(
    config: Annotated[
        Path, typer.Option("--config", help="Preset YAML or bundled preset: llava-tiny, llava-qwen-0.5b.")
    ],
    data: Annotated[
        Path, typer.Option("--data", help="RUN/llava (pretrain.json, instruct.json) or a LLaVA JSON file.")
    ],
    output: Annotated[Path, typer.Option("--output", help="Folder for stage1/, stage2/, checkpoints and logs.")],
    stage: Annotated[str, typer.Option("--stage", help="1, 2 or all (1 then 2).")] = "all",
    resume: Annotated[bool, typer.Option("--resume", help="Skip finished stages; continue from checkpoints.")] = False,
    set: SetOpt = None,
) -> None:
    """LLaVA-style training: stage 1 aligns the projector, stage 2 tunes projector + LM (or LoRA)."""
    from curate.train.llava import LlavaTrainConfig
    from curate.train.llava import train_llava as train

    if stage not in ("1", "2", "all"):
        raise typer.BadParameter(f"--stage {stage!r}: use 1, 2 or all")
    stages = (1, 2) if stage == "all" else (int(stage),)
    summary = train(LlavaTrainConfig.from_yaml(config, set), data, output, stages, resume)
    rows = [(f"{name}.{k}", v) for name, last in summary.items() for k, v in last.items()]
    print_rows(["metric", "value"], rows, "table")


@train_app.command("head")
def train_head(
    run: Annotated[str, typer.Option("--run", help="A run with RUN/embeddings (the clip stage ran).")],
    labels: Annotated[Path, typer.Option("--labels", help="Parquet or CSV of key,label (0/1 or numbers).")],
    output: Annotated[Path, typer.Option("--output", help="The head folder to write (head.json + head.pt).")],
    hidden: Annotated[
        list[int] | None, typer.Option("--hidden", help="Hidden layer size; repeat for two (default: none).")
    ] = None,
    holdout: Annotated[float, typer.Option("--holdout", help="Fraction of labels held out to measure.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Split and initialisation seed.")] = 0,
) -> None:
    """A head (logistic regression or small MLP) on stored embeddings; use it with decide's `head` policy."""
    from curate.train.head import train_head as train

    summary = train(run, labels, output, hidden=hidden, holdout=holdout, seed=seed)
    print_rows(["metric", "value"], sorted(summary.items()), "table")


@app.command()
def caption(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    model: Annotated[str, typer.Option("--model", help="`curate train llava` output, or a Hugging Face captioner.")],
    prompt: Annotated[
        str, typer.Option("--prompt", help="Instruction given with each image.")
    ] = "Describe the image briefly.",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest caption in tokens.")] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per generate call.")] = 16,
    format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Caption images with a trained checkpoint."""
    from curate.models.captioner import caption_files

    try:
        rows = caption_files(images, model, prompt, max_new_tokens, batch_size)
    except FileNotFoundError as err:
        raise InputError(str(err)) from None
    print_rows(["image", "caption"], rows, format)


bench_app = typer.Typer(no_args_is_help=True, help="Measure what recipes are worth.")
app.add_typer(bench_app, name="bench")


@bench_app.command("quality", context_settings={"allow_extra_args": True})
def bench_quality(
    ctx: typer.Context,
    pool: Annotated[Path, typer.Option("--pool", help="URL list every recipe curates (Parquet, CSV, JSONL).")],
    recipes: Annotated[list[str], typer.Option("--recipes", help="Recipes to compare: --recipes A.yaml B.yaml ...")],
    eval: Annotated[Path, typer.Option("--eval", help="Eval spec YAML: data (held-out shards), zero_shot (task).")],
    output: Annotated[Path, typer.Option("--output", help="Folder for one run + model per recipe and the results.")],
    train: Annotated[Path, typer.Option("--train", help="CLIP preset trained on each output.")] = Path("clip-tiny"),
    samples: Annotated[
        int, typer.Option("--samples", help="Samples seen in training, equal for every recipe.")
    ] = 19_200,
    address: AddressOpt = None,
) -> None:
    """Curate one pool with each recipe and with no filter, train the same CLIP on each, evaluate."""
    from curate.bench import bench_quality as run_bench
    from curate.bench import quality_table

    names = [*recipes, *ctx.args]  # `--recipes A B C`: the names after the first arrive as extra arguments
    rows = run_bench(pool, names, eval, output, train, samples, address)
    columns, table = quality_table(rows)
    print_rows(columns, table, "table")
    console.print(f"results: {output}/quality.json, {output}/quality.png")


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
def bundled(
    kind: Annotated[str | None, typer.Argument(help="recipe, train, model, eval or cluster; all when omitted.")] = None,
    name: Annotated[str | None, typer.Argument(help="A bundled name: print its file's path.")] = None,
) -> None:
    """List the recipes and configs that ship with curate, or print one's path (`ray up $(curate bundled cluster local-cluster)`)."""
    from curate import resources

    try:
        if name is not None:
            typer.echo(resources.resolve(kind, name))  # stdout, for $(...)
            return
        kinds = [kind] if kind else list(resources.KINDS)
        rows = [(k, n, str(resources.bundled(k, n))) for k in kinds for n in resources.names(k)]
    except (ValueError, FileNotFoundError) as err:
        raise InputError(str(err)) from None
    print_rows(["kind", "name", "path"], rows, "table")


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


def main() -> None:
    """Entry point: a user error (:class:`curate.errors.UserError`) prints one clear line and exits 2."""
    try:
        app()
    except UserError as err:
        console.print("[red]error:[/red]", escape(str(err)), soft_wrap=True)  # one line, never markup
        sys.exit(2)


if __name__ == "__main__":
    main()
