"""Evaluate a CLIP on WebDataset shards: image-text retrieval and zero-shot classification.

Retrieval
    Every (image, caption) pair of the shards is one query in each direction: image i must find
    caption i among all N captions (``image_to_text_R@k``) and caption i must find image i
    (``text_to_image_R@k``). R@k is the fraction of queries whose true match is among the k best
    candidates by cosine similarity; chance is k/N (``chance_R@k``).

Ties
    A query's rank is the number of *other* candidates that score at least as high as its true
    match (0 = retrieved first), and R@k counts ``rank < k``. Ties count against the query, so
    the result never depends on sort order, and a collapsed model whose embeddings are all equal
    scores R@k = 0 for k < N instead of 1. Zero-shot top-k uses the same rule over classes.
    Scores are compared exactly as computed, in float32.

Zero-shot task file (YAML)
    ::

        description: optional free text
        classes:                      # class name -> keywords that mark it in a caption
          circle: [circle, circles]
          star: [star, stars]
          ring:                       # no keywords: the class name itself
        templates:                    # optional; default ["a photo of a {}."]
          - "a picture of a {}."
          - "a drawing of a {}."

    ``classes`` may also be a plain list of names (each its own only keyword). ``templates`` are
    formatted with the class name; a class's embedding is the mean of its normalised template
    embeddings, renormalised (CLIP's prompt ensembling). A name given to :func:`load_task` that
    is not a file is looked up in ``configs/eval/`` (``shapes`` -> ``configs/eval/shapes.yaml``).

Ground-truth labels
    A sample's label is the class one of whose keywords appears in its caption as a whole word
    (case-insensitive; multi-word keywords match across any whitespace): ``star`` matches
    "a red star" and "star-shaped" but not "start", "starfish" or "stars" (list ``stars`` too).
    Samples whose caption names no class (``skipped_no_class``) or several classes
    (``skipped_ambiguous``) are left out of zero-shot accuracy and counted. So any captioned
    shards can carry a zero-shot task; the demo corpus's captions name shapes and colours.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from curate import config, resources
from curate.device import pick_device
from curate.errors import EvalError
from curate.models.clip import ClipBundle, load_clip
from curate.train.data import dataset_size, expand_shards, iter_pairs

TASK_DIR = resources.folder("eval")
"""Bundled zero-shot tasks, found by name (``shapes``)."""

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class TaskSpec(BaseModel):
    """A zero-shot task file's keys (the format of the module docstring); the classes are checked by :func:`parse_task`."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field("", description="Free text: what the task asks.")
    classes: Any = Field(
        description="Class name -> keywords that mark it in a caption (none: the name itself), or a list of names."
    )
    templates: list[str] | None = Field(
        None, description="Prompt templates, each with one {} for the class name; default ['a photo of a {}.']."
    )


@dataclass
class ZeroShotTask:
    """Classes with the caption keywords that mark them, and the prompt templates."""

    name: str
    classes: dict[str, tuple[str, ...]]  # class name -> keywords
    templates: tuple[str, ...]
    patterns: list[re.Pattern] = field(init=False, repr=False)  # one per class

    def __post_init__(self) -> None:
        self.patterns = [_keyword_pattern(kws) for kws in self.classes.values()]

    @property
    def classnames(self) -> list[str]:
        """Class names, in label order."""
        return list(self.classes)


# --- metrics -------------------------------------------------------------------------------


def retrieval_metrics(
    image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Iterable[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways for N pairs (row i of each matches); ties count against the query."""
    image_emb, text_emb = _normalized(image_emb), _normalized(text_emb)
    if image_emb.shape != text_emb.shape or len(image_emb) == 0:
        raise EvalError(
            f"need N >= 1 paired embeddings of one size; got {tuple(image_emb.shape)} "
            f"images and {tuple(text_emb.shape)} texts"
        )
    n = len(image_emb)
    ranks = {
        "image_to_text": _ranks(image_emb, text_emb),
        "text_to_image": _ranks(text_emb, image_emb),
    }
    metrics: dict[str, float] = {"n": n}
    for direction, rank in ranks.items():
        metrics |= {f"{direction}_R@{k}": (rank < k).sum().item() / n for k in ks}
    return metrics | {f"chance_R@{k}": min(k, n) / n for k in ks}


def _ranks(query: torch.Tensor, gallery: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For query i, how many gallery items j != i score >= gallery item i (its match)."""
    ranks = []
    for start in range(0, len(query), chunk):
        scores = query[start : start + chunk] @ gallery.T
        rows = torch.arange(len(scores))
        true = scores[rows, rows + start]
        ranks.append((scores >= true[:, None]).sum(dim=1) - 1)  # - 1: the match itself
    return torch.cat(ranks)


def matched_pair_auc(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """AUC of matched-pair cosine (i, i) against mismatched-pair cosine (i, j != i).

    The probability that a random matched pair scores above a random mismatched one (ties count
    half): 0.5 for a model that cannot tell them apart, 1.0 for a perfect one.
    """
    sims = _normalized(image_emb) @ _normalized(text_emb).T
    n = len(sims)
    matched = sims.diagonal()
    mismatched = sims[~torch.eye(n, dtype=torch.bool)]
    above = (matched[:, None] > mismatched[None, :]).float().mean()
    ties = (matched[:, None] == mismatched[None, :]).float().mean()
    return float(above + 0.5 * ties)


def zero_shot_metrics(image_emb: torch.Tensor, labels: list[int], class_emb: torch.Tensor) -> dict[str, Any]:
    """Top-1 and top-5 accuracy of classifying each image by its most similar class embedding.

    With 5 classes or fewer every label is within the top 5 (``top5`` = 1.0). Ties count
    against the image, as in retrieval.
    """
    image_emb, class_emb = _normalized(image_emb), _normalized(class_emb)
    n, c = len(labels), len(class_emb)
    if n == 0 or len(image_emb) != n or c == 0:
        raise EvalError(f"need as many labels as images (>= 1); got {n} and {len(image_emb)}")
    target = torch.as_tensor(labels, dtype=torch.long)
    if target.min() < 0 or target.max() >= c:
        raise EvalError(f"labels must lie in [0, {c}); got {target.min()}..{target.max()}")
    scores = image_emb @ class_emb.T
    true = scores.gather(1, target[:, None])
    rank = (scores >= true).sum(dim=1) - 1
    return {
        "n": n,
        "classes": c,
        "top1": (rank < 1).sum().item() / n,
        "top5": (rank < 5).sum().item() / n,
        "chance_top1": 1 / c,
        "chance_top5": min(5, c) / c,
    }


def _normalized(emb: torch.Tensor) -> torch.Tensor:
    """float32, L2-normalised rows, on the CPU; non-finite values are an error."""
    emb = emb.detach().float().cpu()
    if emb.ndim != 2 or not torch.isfinite(emb).all():
        raise EvalError(f"embeddings must be a finite 2-D tensor; got shape {tuple(emb.shape)}")
    return F.normalize(emb, dim=-1)


# --- zero-shot tasks -----------------------------------------------------------------------


def load_task(task: str | Path, overrides: config.Overrides = None) -> ZeroShotTask:
    """Read a zero-shot task YAML (a path, or a name in ``configs/eval/``) with ``overrides`` (``--set``)."""
    path, data = config.read_yaml("eval", task, "zero-shot task", EvalError)
    keys = config.apply_overrides(data, overrides, path, EvalError)
    return parse_task(data, name=path.stem, where=str(path), overridden=keys)


def parse_task(spec: dict, name: str = "task", where: str = "", overridden: Iterable[str] = ()) -> ZeroShotTask:
    """Validate a task mapping (the YAML format of the module docstring); ``where`` names it in errors."""
    checked = config.validate(TaskSpec, spec, where or f"task {name}", EvalError, overridden)
    classes = _parse_classes(checked.classes, name)
    templates = tuple(checked.templates or DEFAULT_TEMPLATES)
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise EvalError(f"task {name}: each template needs exactly one {{}}; fix {bad}")
    return ZeroShotTask(name, classes, templates)


def _parse_classes(raw: Any, name: str) -> dict[str, tuple[str, ...]]:
    """Class name -> keywords, checking there are >= 2 classes and no shared keyword."""
    if not isinstance(raw, dict | list):
        raise EvalError(f"task {name}: `classes:` must be a mapping or a list; got {raw!r}")
    items = raw.items() if isinstance(raw, dict) else ((c, None) for c in raw)
    classes = {}
    for cls, kws in items:
        kws = [kws] if isinstance(kws, str) else list(kws or [cls])
        if not all(isinstance(k, str) and k.strip() for k in [cls, *kws]):
            raise EvalError(f"task {name}: class {cls!r} needs non-empty string keywords")
        classes[str(cls)] = tuple(kws)
    if len(classes) < 2:
        raise EvalError(f"task {name}: needs at least 2 classes; got {list(classes)}")
    owners = Counter(k.lower() for kws in classes.values() for k in set(kws))
    shared = sorted(k for k, count in owners.items() if count > 1)
    if shared:
        raise EvalError(f"task {name}: keywords {shared} belong to several classes")
    return classes


def _keyword_pattern(keywords: Iterable[str]) -> re.Pattern:
    """Any of ``keywords`` as whole words, case-insensitive, any whitespace inside."""
    alternatives = (r"\s+".join(map(re.escape, k.split())) for k in keywords)
    return re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)", re.IGNORECASE)


def match_classes(caption: str, task: ZeroShotTask) -> list[int]:
    """Indices of the classes whose keywords appear in ``caption``."""
    return [i for i, pattern in enumerate(task.patterns) if pattern.search(caption)]


def find_labels(captions: list[str], task: ZeroShotTask) -> tuple[list[int], list[int], dict[str, int]]:
    """(sample indices, their labels, skip counts) for captions naming exactly one class."""
    indices, labels = [], []
    skipped = {"skipped_no_class": 0, "skipped_ambiguous": 0}
    for i, caption in enumerate(captions):
        matched = match_classes(caption, task)
        if len(matched) == 1:
            indices.append(i)
            labels.append(matched[0])
        else:
            skipped["skipped_no_class" if not matched else "skipped_ambiguous"] += 1
    return indices, labels, skipped


# --- embedding -----------------------------------------------------------------------------


def class_embeddings(model, tokenizer, classnames: list[str], templates: Iterable[str], device: str) -> torch.Tensor:
    """One unit vector per class: the mean of its normalised prompt embeddings, renormalised.

    Puts ``model`` in eval mode; returns a float32 CPU tensor of shape (classes, dim).
    """
    templates = list(templates)
    prompts = [t.format(c) for c in classnames for t in templates]
    model.eval()
    with torch.no_grad():
        chunks = [_encode_text(model, tokenizer, batch, device) for batch in _batches(prompts, 256)]
    per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def embed_pairs(
    bundle: ClipBundle, shards: list[str], batch_size: int, device: str, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Normalised image and caption embeddings (float32, CPU) and the captions, in shard order."""
    model = bundle.model.to(device).eval()
    images, texts, captions = [], [], []
    total = dataset_size(shards)
    total = limit if total is None else min(total, limit or total)
    pairs = itertools.islice(iter_pairs(shards), limit)
    with torch.no_grad(), tqdm(total=total, unit="pair", desc="embedding") as bar:
        for batch in _batches(pairs, batch_size):
            pixels = torch.stack([bundle.preprocess_val(image) for _, image, _ in batch])
            images.append(F.normalize(model.encode_image(pixels.to(device)).float(), dim=-1).cpu())
            texts.append(_encode_text(model, bundle.tokenizer, [c for *_, c in batch], device))
            captions += [caption for *_, caption in batch]
            bar.update(len(batch))
    if not captions:
        raise EvalError(f"no image-text pairs in {len(shards)} shards ({shards[:3]})")
    return torch.cat(images), torch.cat(texts), captions


def _encode_text(model, tokenizer, texts: list[str], device: str) -> torch.Tensor:
    """Normalised float32 CPU text embeddings."""
    return F.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1).cpu()


def _batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# --- the whole evaluation ------------------------------------------------------------------


def evaluate_clip(
    model: str,
    data: str,
    zero_shot: str | Path | ZeroShotTask | None = None,
    pretrained: str | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    device: str = "auto",
) -> dict:
    """Retrieval (and, given a task, zero-shot) metrics of ``model`` on the shards at ``data``.

    ``model`` is anything :func:`curate.models.clip.load_clip` takes; ``data`` anything
    :func:`curate.train.data.expand_shards` takes; ``zero_shot`` a task, a task file or a bundled name.
    """
    task = zero_shot if isinstance(zero_shot, ZeroShotTask) else load_task(zero_shot) if zero_shot else None
    shards = expand_shards(data)
    device = str(pick_device(device))
    bundle = load_clip(model, pretrained, device=device)
    image_emb, text_emb, captions = embed_pairs(bundle, shards, batch_size, device, limit)
    result: dict[str, Any] = {
        "model": bundle.model_id,
        "data": data,
        "shards": len(shards),
        "device": device,
        "retrieval": retrieval_metrics(image_emb, text_emb),
    }
    if task is not None:
        result["zero_shot"] = evaluate_zero_shot(bundle, task, image_emb, captions, device)
    return result


def evaluate_zero_shot(
    bundle: ClipBundle,
    task: ZeroShotTask,
    image_emb: torch.Tensor,
    captions: list[str],
    device: str,
) -> dict[str, Any]:
    """Zero-shot metrics on the samples whose caption names exactly one class of ``task``."""
    indices, labels, skipped = find_labels(captions, task)
    if not labels:
        raise EvalError(
            f"zero-shot task {task.name}: no caption names exactly one of its classes "
            f"{task.classnames} ({skipped}); pick a task that fits these captions"
        )
    class_emb = class_embeddings(bundle.model, bundle.tokenizer, task.classnames, task.templates, device)
    metrics = zero_shot_metrics(image_emb[indices], labels, class_emb)
    counts = Counter(labels)
    class_counts = {name: counts[i] for i, name in enumerate(task.classnames)}
    return {"task": task.name, **metrics, **skipped, "class_counts": class_counts}


def flatten_metrics(result: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) rows of a nested result, e.g. ``retrieval.image_to_text_R@1``."""
    rows: list[tuple[str, Any]] = []
    for key, value in result.items():
        if isinstance(value, dict):
            rows += flatten_metrics(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows
