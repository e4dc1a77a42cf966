"""``curate demo``: the whole mission on a small corpus served on 127.0.0.1, step by step.

corpus (real emoji pairs, else generated shapes) → a CLIP filter bootstrapped offline on a trusted seed set
(``curate train clip``, lit-offline; cached) and its ``min_score`` calibrated on the seed set's held-out pairs →
a captioner (``curate train llava``, llava-tiny, on the seed set; cached) → ``curate run`` with
``pipelines/demo-full.yaml`` (acquire, signals, CLIP score, exact/near/semantic dedup, balancing, recaption,
WebDataset + Parquet + LLaVA, report) → ``curate train clip`` on the curated shards → ``curate eval clip`` on
held-aside pairs → one closing summary. Each step calls the function its CLI command calls.

Models are cached under ``$CURATE_CACHE/demo`` (``~/.cache/curate/demo``) in folders named by a hash of what
they were trained on (the seed shards' bytes and the training settings), written to a temporary folder and
renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from curate.console import console
from curate.demo.sources import DemoCorpus

T = TypeVar("T")
MAX_CLEAN_LOSS = 0.02  # min_score rejects this share of the seed set's held-out true pairs


@dataclass(frozen=True)
class Sizes:
    """How big each step of the demo is (FULL for ``make demo``, TINY for the test)."""

    pool: int = 500  # rows of the noisy pool (every noise kind planted)
    semantic: int = 8  # semantic duplicates planted (the same subject drawn again)
    filter_steps: int = 300  # lit-offline projection steps on the seed set
    captioner_records: int = 400  # seed pairs the captioner trains on
    captioner: dict = field(  # llava-tiny settings: a short run (its captions compete with the alt text per row)
        default_factory=lambda: {
            "stage1.steps": 40,
            "stage1.batch_size": 8,
            "stage2.steps": 60,
            "stage2.batch_size": 8,
            "log_every": 10,
            "save_every": 1000,
        }
    )
    train_steps: int = 200  # lit-offline steps on the curated shards
    clip_batch: int = 64  # pairs per lit-offline step (filter and curated training)
    recaption_tokens: int = 64


FULL = Sizes()
TINY = Sizes(
    pool=40,
    semantic=2,
    filter_steps=20,
    captioner_records=24,
    captioner={"stage1.steps": 4, "stage1.batch_size": 4, "stage2.steps": 4, "stage2.batch_size": 4, "log_every": 2},
    train_steps=10,
    clip_batch=8,
    recaption_tokens=8,
)


@dataclass
class MissionResult:
    """Where everything is and what it measured (also ``OUTPUT/demo.json``). ``OUTPUT`` is the run directory;
    the demo adds ``demo/`` (seed splits, eval pairs, zero-shot task), ``clip/`` (the CLIP trained on the
    curated shards) and ``demo.json``."""

    output: str
    corpus: str
    fallback: str | None
    funnel: dict
    paths: dict[str, str]
    eval: dict
    filter: dict
    seconds: dict[str, float] = field(default_factory=dict)


class Steps:
    """Numbered steps with their wall time, announced on the console."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.seconds = total, 0, {}

    def run(self, name: str, what: str, fn: Callable[..., T], *args: Any) -> T:
        self.n += 1
        console.print(f"[bold][{self.n}/{self.total}][/bold] {what}")
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        console.print(f"      done in {self.seconds[name]:.1f} s")
        return out


def run_mission(
    output: str | Path,
    sizes: Sizes = FULL,
    corpus: str = "auto",
    address: str | None = None,
    cache: Path | None = None,
) -> MissionResult:
    """Run the whole demo into ``output``; ``corpus``: auto (emoji when installable), emoji or shapes; the
    models are cached in ``cache`` (default ``$CURATE_CACHE/demo``)."""
    from curate.io import cache_dir, write_json

    output, cache = Path(output).resolve(), cache or cache_dir("demo")
    start_run(output)
    steps = Steps(7)
    data, fallback = steps.run("corpus", "corpus: real pairs with planted noise", pick_corpus, corpus, output, sizes)
    model = steps.run(
        "filter", "CLIP filter: curate train clip (lit-offline) on the seed set", train_filter, data, sizes, cache
    )
    min_score = steps.run("calibrate", "calibrate min_score on the seed set's held-out pairs", calibrate, model, data)
    captioner = steps.run(
        "captioner", "captioner: curate train llava (llava-tiny) on the seed set", train_captioner, data, sizes, cache
    )
    run = steps.run("curate", "curate run pipelines/demo-full.yaml (acquire → signals → decide → recaption → emit)",
                    lambda: curate_pool(data, model, min_score, captioner, output, sizes, address))  # fmt: skip
    clip = steps.run("train", "curate train clip (lit-offline) on the curated shards", train_on_curated, output, sizes)
    metrics = steps.run("eval", "curate eval clip on held-aside pairs", evaluate, clip, data)
    result = MissionResult(str(output), data.kind, fallback, run.funnel, outputs(output, clip), metrics,
                           {"model": str(model), "min_score": min_score}, steps.seconds)  # fmt: skip
    write_json(str(output / "demo.json"), asdict(result))
    return result


def start_run(output: Path) -> None:
    """Make ``output`` a curate run directory (or check it is one): the demo's own files go beside the run's."""
    from curate.manifest import Manifest
    from curate.run import is_run, prepare_run_dir

    prepare_run_dir(output)
    if not is_run(output):
        Manifest(output).save()  # the folder is a run from here on: the corpus and the URL list are written into it


def pick_corpus(kind: str, output: Path, sizes: Sizes) -> tuple[DemoCorpus, str | None]:
    """The emoji corpus when its sources are there (or installable), else the generated one and why."""
    from curate.demo.sources import emoji_available, emoji_corpus, shapes_corpus

    why = emoji_available() if kind in ("auto", "emoji") else None
    if kind == "emoji" and why:
        raise RuntimeError(why)
    if why:
        console.print(f"[yellow]generated shapes instead of real pairs:[/yellow] {why}")
    with console.status("composing the pool, seed set and eval pairs (the real pairs once, then from the cache)"):
        if kind == "shapes" or why:
            return shapes_corpus(output / "demo", sizes.pool, semantic=sizes.semantic), why
        return emoji_corpus(output / "demo", sizes.pool, semantic=sizes.semantic), None


def fingerprint(*parts: Any) -> str:
    """A short hash of data (the content of tars' members and Parquet tables, not their file bytes, which hold
    write times) and settings: names a cached model by what it was trained on."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            for f in sorted(part.rglob("*")) if part.is_dir() else [part]:
                digest.update(f.name.encode() + _content(f))
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def _content(path: Path) -> bytes:
    """What a file holds: each tar member's name and bytes, a Parquet table's Arrow stream; else nothing."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            return b"".join(m.name.encode() + tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    if path.suffix == ".parquet":
        table, out = pq.read_table(path), io.BytesIO()
        with pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)
        return out.getvalue()
    return path.read_bytes() if path.suffix == ".json" else b""


def cached(folder: Path, build: Callable[[Path], Any]) -> Path:
    """``folder`` if complete, else ``build(tmp)`` in a sibling temporary folder renamed into place."""
    if folder.is_dir():
        console.print(f"      cached: {folder}")
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    build(tmp)
    tmp.rename(folder)
    return folder


def train_filter(data: DemoCorpus, sizes: Sizes, cache: Path) -> Path:
    """lit-offline's projections trained on the seed set by ``curate train clip`` (cached)."""
    from curate.train.clip import ClipTrainConfig, train_clip

    settings = {"steps": sizes.filter_steps, "batch_size": sizes.clip_batch, "save_every": 10_000}
    cfg = ClipTrainConfig.from_yaml("lit-offline", settings)
    folder = cache / f"filter-{data.kind}-{fingerprint(data.seed_train, cfg.model_dump())}"
    return cached(folder, lambda out: train_clip(cfg, str(data.seed_train), out))


def calibrate(model: Path, data: DemoCorpus) -> float:
    """The clip_score below which MAX_CLEAN_LOSS of the seed set's held-out true pairs fall."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from curate.io import write_json
    from curate.signals.clip import ClipScorer

    stored = model / f"min_score-{fingerprint(data.seed_val)}.json"
    if stored.is_file():
        return json.loads(stored.read_text())["min_score"]
    val = pq.read_table(data.seed_val, columns=["image", "caption"])
    val = val.append_column("key", pa.array([f"{i:09d}" for i in range(len(val))]))
    scorer, scores = ClipScorer(ClipScorer.Config(model=str(model), batch_size=64)), []
    for start in tqdm(range(0, len(val), 64), desc="score held-out pairs", unit="batch"):
        scores += scorer(val.slice(start, 64)).column("clip_score").to_pylist()
    min_score = round(float(np.quantile(np.asarray(scores, np.float32), MAX_CLEAN_LOSS)), 4)
    write_json(str(stored), {"min_score": min_score, "pairs": len(val), "max_clean_loss": MAX_CLEAN_LOSS})
    return min_score


def train_captioner(data: DemoCorpus, sizes: Sizes, cache: Path) -> Path:
    """llava-tiny trained by ``curate train llava`` on the seed set's pairs in LLaVA's format (cached)."""
    from curate.train.llava import LlavaTrainConfig, train_llava

    cfg = LlavaTrainConfig.from_yaml("llava-tiny", sizes.captioner)
    key = fingerprint(data.seed_train, cfg.model_dump(), sizes.captioner_records)
    folder = cache / f"captioner-{data.kind}-{key}"

    def build(out: Path) -> None:
        records = llava_export(data.seed_train, sizes.captioner_records, out / "data")
        train_llava(cfg, records, out / "model")
        shutil.rmtree(out / "data")

    return cached(folder, build) / "model"


def llava_export(shards: Path, limit: int, folder: Path) -> Path:
    """The first ``limit`` seed pairs as ``curate emit``'s LLaVA export: images/ + pretrain.json, instruct.json."""
    import io

    import webdataset as wds
    from PIL import Image

    from curate.emit.llava import KINDS, image_path, llava_records

    rows = []
    for sample in wds.WebDataset(sorted(str(p) for p in shards.glob("*.tar")), shardshuffle=False).slice(limit):
        body = sample.get("jpg") or sample.get("png")
        with Image.open(io.BytesIO(body)) as im:
            rgb = im.convert("RGB")
        rgb.thumbnail((128, 128))  # llava-tiny sees 64 px
        target = folder / image_path("seed", sample["__key__"])
        target.parent.mkdir(parents=True, exist_ok=True)
        rgb.save(target, format="JPEG", quality=90)
        rows.append({"key": sample["__key__"], "caption": sample["txt"].decode(), "caption_alt": None,
                     "width": rgb.width, "height": rgb.height})  # fmt: skip
    for kind, records in zip(KINDS, llava_records(rows, "seed"), strict=True):
        (folder / f"{kind}.json").write_text(json.dumps(records))
    return folder


def curate_pool(
    data: DemoCorpus, model: Path, min_score: float, captioner: Path, output: Path, sizes: Sizes, address: str | None
):
    """``curate run pipelines/demo-full.yaml`` on the pool, served on 127.0.0.1 (a second demo resumes)."""
    from curate.demo.server import LoopbackServer, previous_port, write_url_list
    from curate.recipe import load_recipe
    from curate.run import run_pipeline

    recipe = load_recipe("demo-full", [
        f"annotate.clip.model={model}", f"decide.clip_score.min_score={min_score}",
        f"enrich.recaption.model={captioner}", f"enrich.recaption.max_new_tokens={sizes.recaption_tokens}",
    ])  # fmt: skip
    urls = output / "demo_urls.parquet"
    with LoopbackServer(data.objects, port=previous_port(urls)) as server:  # same URLs: the run resumes
        urls = write_url_list(data.rows, server.base_url, urls)
        console.print(f"      serving {len(data.objects)} objects on {server.base_url}; {len(data.rows)} URLs")
        return run_pipeline(recipe, str(urls), str(output), address)


def train_on_curated(output: Path, sizes: Sizes) -> Path:
    """``curate train clip`` (lit-offline, towers frozen) on the curated shards; kept while they are the same."""
    from curate.train.clip import ClipTrainConfig, train_clip

    settings = {"steps": sizes.train_steps, "batch_size": sizes.clip_batch, "save_every": 10_000}
    cfg = ClipTrainConfig.from_yaml("lit-offline", settings)
    shards, folder = output / "shards", output / "clip"
    marker = folder / "demo_trained_on.json"
    key = fingerprint(shards, cfg.model_dump())
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        console.print(f"      already trained on these shards: {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # its cached features are of other shards
    train_clip(cfg, str(shards), folder)
    marker.write_text(json.dumps({"key": key}))
    return folder


def evaluate(model: Path, data: DemoCorpus) -> dict:
    """``curate eval clip``: retrieval and zero-shot accuracy on the held-aside pairs; writes MODEL/eval.json."""
    from curate.train.eval import evaluate_clip

    path, marker = model / "eval.json", model / "demo_trained_on.json"
    if path.is_file() and marker.is_file() and path.stat().st_mtime > marker.stat().st_mtime:
        return json.loads(path.read_text())
    result = evaluate_clip(str(model), str(data.eval_data), data.zero_shot)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def outputs(output: Path, clip: Path) -> dict[str, str]:
    """Where each output of the demo is."""
    return {
        "shards": f"{output}/shards", "metadata": f"{output}/metadata", "llava": f"{output}/llava",
        "report": f"{output}/report/report.html", "manifest": f"{output}/manifest.json",
        "clip model": str(clip), "eval": str(clip / "eval.json"), "summary": str(output / "demo.json"),
    }  # fmt: skip


def print_summary(result: MissionResult) -> None:
    """The closing summary: the funnel with a reason for every reject, the outputs, the eval numbers, next commands."""
    from rich.table import Table

    from curate.reasons import REASONS

    steps, total = result.funnel["steps"], result.funnel["steps"]["input"] or 1
    funnel = Table("funnel", "rows", "of input", "why", title=f"curated {result.corpus} pairs", title_justify="left")
    for name, n in steps.items():
        funnel.add_row(name, str(n), f"{100 * n / total:.1f}%", "")
    for reason, n in result.funnel["rejected"].items():
        funnel.add_row(f"  rejected: {reason}", str(n), f"{100 * n / total:.1f}%", short(REASONS.get(reason, "")))
    where = Table("output", "where", title="outputs", title_justify="left")
    for name, path in result.paths.items():
        where.add_row(name, path)
    metrics = Table("metric", "value", title="curate eval clip (held-aside pairs)", title_justify="left")
    for name, value in eval_rows(result.eval):
        metrics.add_row(name, value)
    for table in (funnel, where, metrics):
        console.print(table)
    console.print(f"CLIP filter: {result.filter['model']} (min_score {result.filter['min_score']:.4f})")
    console.print(f"step times (s): {result.seconds}")
    console.print("next:\n" + "\n".join(f"  {c}" for c in next_commands(result)))


def short(text: str, width: int = 72) -> str:
    """A reason's description cut to its first clause, at most ``width`` characters (``curate reasons`` has all)."""
    first = text.split(". ")[0].split("; ")[0].rstrip(".")
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def eval_rows(result: dict) -> list[tuple[str, str]]:
    """The headline eval numbers: pairs, retrieval recall@1/@5 both ways, zero-shot top-1/top-5, with chance."""
    retrieval, zero = result.get("retrieval", {}), result.get("zero_shot", {})
    keys = [("retrieval", k) for k in ("n", "image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1",
                                       "text_to_image_R@5", "chance_R@1")]  # fmt: skip
    keys += [("zero-shot", k) for k in ("n", "classes", "top1", "top5", "chance_top1")]
    rows = []
    for group, key in keys:
        value = (retrieval if group == "retrieval" else zero).get(key)
        if value is not None:
            rows.append((f"{group} {key}", f"{value:.3f}" if isinstance(value, float) else str(value)))
    return rows


def next_commands(result: MissionResult) -> list[str]:
    """Commands to try on the demo's outputs."""
    run, paths = result.output, result.paths
    return [
        f'curate stats {run} "SELECT reason, count(*) FROM decisions GROUP BY 1 ORDER BY 2 DESC"',
        f"curate decide {run} --set decide.balance.t=3            # re-decide from stored signals, in seconds",
        f"curate calibrate {run}                                  # measure near_dedup.k and semantic_dedup.eps",
        f"curate train llava --config llava-tiny --data {paths['llava']} --output models/llava",
        f"curate eval clip {paths['clip model']} --data {paths['shards']}",
        f"curate status {run}",
    ]
