"""The demo's corpora: a noisy pool served on loopback, a trusted seed set, and held-aside eval pairs.

``emoji`` (real pairs, :mod:`curate.demo.emoji_corpus`): Noto Color Emoji (Debian ``fonts-noto-color-emoji``)
and OpenMoji (npm ``openmoji``) glyphs named by the PyPI ``emoji`` package's CLDR names, with planted noise of
every kind curate rejects; the seed set and the eval pairs are the held-out share of the same sources' glyphs
(never in the pool). ``shapes`` (generated, :mod:`curate.demo.corpus`): drawings of coloured shapes, the
fallback when the emoji sources are missing. Both add what their generator lacks: one slow URL and semantic
duplicates (a clean image mirrored); ``shapes`` also gets boilerplate, non-English and mismatched captions.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.demo.corpus import DemoRow, WebObject, build_corpus
from curate.resources import resolve

SLOW_DELAY_S = 6.0  # the slow URL answers after this long (the demo recipe's acquire timeout is 3 s)
EMOJI_PACKAGES = "apt-get install fonts-noto-color-emoji npm; pip install emoji cairosvg (the bench extra)"
TEMPLATES = ["{}.", "a {} emoji.", "a {} icon.", "{} clipart.", "an illustration of a {}."]


@dataclass
class DemoCorpus:
    """What one demo curates, bootstraps its filter on and evaluates with."""

    kind: str  # "emoji" (real pairs) or "shapes" (generated)
    objects: dict[str, WebObject]  # served on loopback, by URL path
    rows: list  # URL list rows: path, caption, defect, expected_reason (DemoRow or QualityRow)
    seed_train: Path  # trusted pairs: WebDataset tars + sizes.json
    seed_val: Path  # held-out trusted pairs (Parquet: image, caption): calibrates the filter's min_score
    eval_data: Path  # held-aside pairs (WebDataset), never in the pool or the seed set's training part
    zero_shot: str  # zero-shot task: a YAML path or a bundled name


def emoji_available() -> str | None:
    """None when the real pairs can be built here, else a one-line reason with what to install."""
    from curate.demo.emoji_sources import SourceUnavailable, default_cache, ensure_sources

    try:
        ensure_sources(cache_dir=default_cache(), install=True)
    except (SourceUnavailable, OSError) as err:
        return f"{err} — to use real pairs: {EMOJI_PACKAGES}"
    return None


def emoji_corpus(folder: Path, pool: int, seed: int = 0, semantic: int = 8, built: Path | None = None) -> DemoCorpus:
    """The real pairs: the emoji pool (``pool`` rows), its held-out glyphs as seed set and eval pairs; the pool
    and the seed part are built once into ``built`` (default: the sources' cache, shared with the benchmarks)."""
    from curate.demo.emoji_corpus import build_holdout_part, build_quality_corpus
    from curate.demo.emoji_sources import default_cache, load_catalogue

    built = built or default_cache()
    objects, rows = build_quality_corpus(built, pool, seed, cache=default_cache())
    part = build_holdout_part(built, seed, cache=default_cache())
    rng = random.Random(seed + 5)
    clean = [r for r in rows if r.defect is None and r.path.endswith(".jpg")]
    for j, orig in enumerate(rng.sample(clean, min(semantic, len(clean) // 4))):
        path = f"/img/mirrored{j:04d}.jpg"
        objects[path] = WebObject(path, mirrored(objects[orig.path].body), "image/jpeg")
        rows.append(replace(orig, path=path, defect="dup_semantic", expected_reason="dup_semantic", dup_of=orig.path))
    objects, rows = with_slow_url(objects, rows, rng)
    val, evals = split_val(part.val, folder)
    names = {p.concept: p.name for p in load_catalogue()}
    task = emoji_task(pq.read_table(evals, columns=["concept"]).column("concept").to_pylist(), names, folder)
    return DemoCorpus("emoji", objects, rows, part.train, val, write_eval_shards(evals, folder / "eval"), str(task))


def split_val(val: Path, folder: Path) -> tuple[Path, Path]:
    """The seed set's held-out pairs split in two: even rows calibrate the filter, odd rows evaluate."""
    table = pq.read_table(val)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "calibrate.parquet", folder / "eval.parquet"
    for start, path in zip((0, 1), out, strict=True):
        pq.write_table(table.take(list(range(start, len(table), 2))), path)
    return out


def emoji_task(concepts: list[str], names: dict[str, str], folder: Path) -> Path:
    """A zero-shot task over the English names of the eval pairs' emoji (CLIP's prompt ensembling)."""
    import yaml

    classes = sorted({names[c].lower() for c in concepts if c in names})
    task = {"description": f"Which emoji? {len(classes)} English emoji names.", "classes": classes}
    path = folder / "zero_shot.yaml"
    path.write_text(yaml.safe_dump({**task, "templates": TEMPLATES}, allow_unicode=True))
    return path


def write_eval_shards(table_path: Path, folder: Path) -> Path:
    """Pairs (Parquet: image, caption) as one WebDataset tar + sizes.json, as curate emits them."""
    from curate.emit.webdataset import WebDatasetWriter

    rows = pq.read_table(table_path, columns=["image", "caption"]).to_pylist()
    folder.mkdir(parents=True, exist_ok=True)
    with WebDatasetWriter(str(folder / "00000.tar")) as writer:
        for i, row in enumerate(rows):
            writer.write(f"{i:09d}", row["image"], image_ext(row["image"]), row["caption"], {})
    (folder / "sizes.json").write_text(f'{{"00000.tar": {len(rows)}}}')
    return folder


def image_ext(body: bytes) -> str:
    """``png`` for PNG bytes, else ``jpg``."""
    return "png" if body[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def with_slow_url(objects: dict[str, WebObject], rows: list, rng: random.Random) -> tuple[dict, list]:
    """One clean row's object answers only after SLOW_DELAY_S (its row then expects download_timeout)."""
    i = next(i for i in rng.sample(range(len(rows)), len(rows)) if rows[i].defect is None)
    obj = objects[rows[i].path]
    objects = {**objects, obj.path: replace(obj, delay_s=SLOW_DELAY_S)}
    rows = [*rows[:i], replace(rows[i], defect="slow", expected_reason="download_timeout"), *rows[i + 1 :]]
    return objects, rows


# --- the generated fallback ------------------------------------------------------------------------

BOILERPLATE = ("IMG_4821.jpg", "click here", "stock photo", "image", "Untitled-3", "DSC01234.JPG")
FOREIGN = ("un cercle rouge sur fond bleu", "ein blaues Quadrat auf weißem Grund", "un triángulo verde y amarillo",
           "赤い円と青い四角", "красный круг на синем фоне", "una stella gialla su sfondo nero")  # fmt: skip


def shapes_corpus(folder: Path, pool: int, seed: int = 0, semantic: int = 4) -> DemoCorpus:
    """The generated fallback: shapes with every planted defect, a disjoint seed set and eval pairs."""
    objects, rows = build_corpus(n_clean=pool, seed=seed, slow_delay_s=SLOW_DELAY_S)
    rows = plant_caption_noise(rows, random.Random(seed + 3), max(1, pool // 25))
    objects, rows = plant_redrawn(objects, rows, random.Random(seed + 4), semantic)
    seed_train, seed_val = shapes_pairs(folder / "seed", max(40, pool), seed + 101, val=max(16, pool // 4))
    eval_data = write_eval_shards(
        shapes_pairs(folder / "eval-pairs", max(16, pool // 3), seed + 202, val=0)[1], folder / "eval"
    )
    task = folder / "zero_shot.yaml"
    shutil.copyfile(resolve("eval", "shapes"), task)  # the bundled shapes task, where the emoji demo writes its own
    return DemoCorpus("shapes", objects, rows, seed_train, seed_val, eval_data, str(task))


def plant_caption_noise(rows: list[DemoRow], rng: random.Random, count: int) -> list[DemoRow]:
    """``count`` clean rows each get a boilerplate, a non-English and another row's (mismatched) caption."""
    clean = [i for i, r in enumerate(rows) if r.defect is None]
    picked = rng.sample(clean, min(len(clean) // 2, 3 * count))
    rows = list(rows)
    for j, i in enumerate(picked):
        kind = ("boilerplate", "non_english", "mismatched")[j % 3]
        caption = {"boilerplate": rng.choice(BOILERPLATE), "non_english": rng.choice(FOREIGN)}.get(kind)
        caption = caption or rows[clean[(clean.index(i) + len(clean) // 2) % len(clean)]].caption
        reason = {"boilerplate": "caption_boilerplate", "non_english": "wrong_language"}.get(kind, "low_clip_score")
        rows[i] = replace(rows[i], caption=caption, defect=kind, expected_reason=reason)
    return rows


def plant_redrawn(objects: dict, rows: list[DemoRow], rng: random.Random, count: int) -> tuple[dict, list]:
    """Semantic duplicates: ``count`` clean images shown again mirrored (see :func:`mirrored`)."""
    clean = [r for r in rows if r.defect is None and r.path.endswith(".jpg")]
    objects, rows = dict(objects), list(rows)
    for j, orig in enumerate(rng.sample(clean, min(count, len(clean)))):
        path = f"/img/mirrored{j:04d}.jpg"
        objects[path] = WebObject(path, mirrored(objects[orig.path].body), "image/jpeg")
        rows.append(DemoRow(path, orig.caption, "dup_semantic", "dup_semantic"))
    return objects, rows


def mirrored(body: bytes) -> bytes:
    """The picture mirrored left-right, as JPEG: its pHash is ~32 bits away (near_dedup misses it), its CLIP
    image embedding stays close (cosine 0.86-0.94 with the demo's filter, measured on 12 emoji pairs)."""
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(body)) as im:
        flipped = ImageOps.mirror(im.convert("RGB"))
    out = io.BytesIO()
    flipped.save(out, format="JPEG", quality=85)
    return out.getvalue()


def shapes_pairs(folder: Path, n: int, seed: int, val: int) -> tuple[Path, Path]:
    """``n`` clean generated pairs: WebDataset training shards and the last ``val`` pairs as Parquet."""
    from curate.emit.webdataset import WebDatasetWriter

    objects, rows = build_corpus(n_clean=n + val, seed=seed)
    pairs = [(objects[r.path].body, r.caption) for r in rows if r.defect is None]
    train, held = pairs[: len(pairs) - val], pairs[len(pairs) - val :] or pairs
    (folder / "train").mkdir(parents=True, exist_ok=True)
    with WebDatasetWriter(str(folder / "train" / "00000.tar")) as writer:
        for i, (body, caption) in enumerate(train):
            writer.write(f"{i:09d}", body, image_ext(body), caption, {})
    (folder / "train" / "sizes.json").write_text(f'{{"00000.tar": {len(train)}}}')
    table = pa.table({"image": pa.array([b for b, _ in held], pa.binary()), "caption": [c for _, c in held]})
    pq.write_table(table, folder / "val.parquet")
    return folder / "train", folder / "val.parquet"
