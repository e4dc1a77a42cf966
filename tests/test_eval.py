"""curate eval clip: retrieval and zero-shot metrics, the label rule, and an end-to-end run."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import typer
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from curate.train.cli_eval import eval_clip
from curate.train.eval import (
    EvalError,
    evaluate_clip,
    find_labels,
    load_task,
    match_classes,
    parse_task,
    retrieval_metrics,
    zero_shot_metrics,
)

SHAPES_TASK = Path(__file__).resolve().parents[1] / "configs" / "eval" / "shapes.yaml"


def unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def on_circle(angles: list[float]) -> torch.Tensor:
    """2-D unit vectors: cosine similarity falls with angular distance."""
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


# --- retrieval -----------------------------------------------------------------------------


def test_identical_pairs_retrieve_perfectly():
    emb = unit(50, 32)
    metrics = retrieval_metrics(emb, emb.clone())
    for direction in ("image_to_text", "text_to_image"):
        assert [metrics[f"{direction}_R@{k}"] for k in (1, 5, 10)] == [1.0, 1.0, 1.0]
    assert metrics["n"] == 50
    assert metrics["chance_R@1"] == pytest.approx(1 / 50)
    assert metrics["chance_R@10"] == pytest.approx(10 / 50)


def test_known_permutation_gives_exact_recalls():
    # Points at angles 0, .1, .3, .7; caption j sits where image perm[j] sits.
    angles, perm = [0.0, 0.1, 0.3, 0.7], [1, 2, 3, 0]
    images, texts = on_circle(angles), on_circle([angles[p] for p in perm])
    metrics = retrieval_metrics(images, texts, ks=(1, 2, 3, 4))
    # image ranks [1, 2, 3, 3] and caption ranks [1, 1, 1, 3], worked out by hand
    assert [metrics[f"image_to_text_R@{k}"] for k in (1, 2, 3, 4)] == [0.0, 0.25, 0.5, 1.0]
    assert [metrics[f"text_to_image_R@{k}"] for k in (1, 2, 3, 4)] == [0.0, 0.75, 0.75, 1.0]


def test_shuffled_captions_score_the_fixed_points():
    images = unit(40, 64, seed=1)
    perm = list(range(10)) + list(range(11, 40)) + [10]  # 10 pairs stay, 30 rotate
    metrics = retrieval_metrics(images, images[perm])
    assert metrics["image_to_text_R@1"] == metrics["text_to_image_R@1"] == 10 / 40


def test_random_embeddings_score_near_chance():
    metrics = retrieval_metrics(unit(200, 64, seed=2), unit(200, 64, seed=3))
    for direction in ("image_to_text", "text_to_image"):
        assert metrics[f"{direction}_R@1"] <= 0.04  # chance 0.005
        assert metrics[f"{direction}_R@10"] <= 0.15  # chance 0.05


def test_ties_count_against_the_query():
    # One-hot vectors: a true match scores 1 only at a fixed point of perm, else it ties at 0
    # with every other wrong candidate but one (which scores 1), so it ranks last.
    eye = torch.eye(10)
    perm = [0, 1, 2, 3, 5, 6, 7, 8, 9, 4]  # 4 fixed points
    metrics = retrieval_metrics(eye, eye[perm], ks=(1, 5, 9, 10))
    for direction in ("image_to_text", "text_to_image"):
        assert [metrics[f"{direction}_R@{k}"] for k in (1, 5, 9, 10)] == [0.4, 0.4, 0.4, 1.0]
    # a collapsed model (all embeddings equal) scores zero, not one
    same = torch.ones(6, 4)
    collapsed = retrieval_metrics(same, same, ks=(1, 5, 6))
    assert [collapsed[f"image_to_text_R@{k}"] for k in (1, 5, 6)] == [0.0, 0.0, 1.0]


def test_retrieval_rejects_bad_input():
    with pytest.raises(EvalError):
        retrieval_metrics(unit(4, 8), unit(5, 8))
    with pytest.raises(EvalError):
        retrieval_metrics(torch.full((3, 4), float("nan")), unit(3, 4))


# --- zero-shot -----------------------------------------------------------------------------


def test_zero_shot_metrics_known_answers():
    classes = torch.eye(6)
    scores = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # class 0 best ... class 5 worst
    images = scores.repeat(4, 1)
    labels = [0, 1, 4, 5]  # ranks 0, 1, 4, 5 -> top1 hits 1, top5 hits 3
    metrics = zero_shot_metrics(images, labels, classes)
    assert metrics == {
        "n": 4,
        "classes": 6,
        "top1": 0.25,
        "top5": 0.75,
        "chance_top1": pytest.approx(1 / 6),
        "chance_top5": pytest.approx(5 / 6),
    }
    tied = zero_shot_metrics(torch.ones(2, 6), [0, 3], classes)  # all classes tie
    assert tied["top1"] == tied["top5"] == 0.0


# --- task files and labels -----------------------------------------------------------------


def test_label_rule_uses_whole_words():
    task = parse_task({"classes": {"star": ["star"], "circle": ["circle", "circles"]}})
    assert match_classes("A red STAR on blue", task) == [0]
    assert match_classes("a star-shaped cookie", task) == [0]
    for caption in ("start here", "a starfish", "stars at night", "semicircle"):
        assert match_classes(caption, task) == [], caption
    captions = ["a star", "two circles", "a star and a circle", "a starfish", "a star, a star"]
    indices, labels, skipped = find_labels(captions, task)
    assert (indices, labels) == ([0, 1, 4], [0, 1, 0])
    assert skipped == {"skipped_no_class": 1, "skipped_ambiguous": 1}


def test_task_formats_and_errors():
    listed = parse_task({"classes": ["cat", "dog"], "templates": ["a {}"]})
    assert listed.classes == {"cat": ("cat",), "dog": ("dog",)}
    multi = parse_task({"classes": {"polka": ["polka dots"], "plain": None}})
    assert match_classes("Polka\n  dots everywhere", multi) == [0]
    assert multi.classes["plain"] == ("plain",) and multi.templates == ("a photo of a {}.",)
    shapes = load_task("shapes")
    assert shapes.classnames[:3] == ["circle", "square", "triangle"]
    assert 3 <= len(shapes.templates) <= 5
    for bad in (
        {"classes": ["only"]},
        {"classes": {"a": ["x"], "b": ["X"]}},
        {"classes": ["a", "b"], "templates": ["no slot"]},
        {"classes": ["a", "b"], "typo": 1},
    ):
        with pytest.raises(EvalError):
            parse_task(bad)
    with pytest.raises(EvalError, match="shapes"):
        load_task("no-such-task")


# --- end to end ----------------------------------------------------------------------------

COLOURS = {"red": (215, 40, 40), "blue": (40, 85, 215), "green": (50, 165, 70)}
SHAPES = ("circle", "square", "triangle", "star")


def draw(shape: str, colour: str, size: int = 72) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    d, c, r = ImageDraw.Draw(image), size / 2, size / 3
    points = {3: [], 4: [], 10: []}
    for n in points:
        radii = [r, r * 0.45] * 5 if n == 10 else [r] * n
        points[n] = [
            (c + rad * math.cos(2 * math.pi * i / n), c + rad * math.sin(2 * math.pi * i / n))
            for i, rad in enumerate(radii)
        ]
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse((c - r, c - r, c + r, c + r), fill=fill)
    else:
        d.polygon(points[{"square": 4, "triangle": 3, "star": 10}[shape]], fill=fill)
    return image


def caption(i: int) -> str:
    """Every fifth caption names two shapes (ambiguous), every seventh none."""
    shape, colour = SHAPES[i % 4], list(COLOURS)[i % 3]
    if i % 5 == 4:
        return f"a {colour} {shape} and a {SHAPES[(i + 1) % 4]} on a white background"
    if i % 7 == 6:
        return f"something {colour} on a white background"
    return f"a {colour} {shape} on a white background"


def write_shard(path: Path, start: int, count: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + count):
            buf = io.BytesIO()
            draw(SHAPES[i % 4], list(COLOURS)[i % 3]).save(buf, format="JPEG", quality=90)
            meta = json.dumps({"key": f"{i:06d}", "caption": caption(i)}).encode()
            for ext, body in (
                ("jpg", buf.getvalue()),
                ("txt", caption(i).encode()),
                ("json", meta),
            ):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval-shards")
    write_shard(folder / "00000.tar", 0, 20)
    write_shard(folder / "00001.tar", 20, 20)
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": 20, "00001.tar": 20}))
    return folder


def expected_zero_shot_counts(n: int) -> tuple[int, int, int]:
    ambiguous = sum(1 for i in range(n) if i % 5 == 4)
    no_class = sum(1 for i in range(n) if i % 5 != 4 and i % 7 == 6)
    return n - ambiguous - no_class, no_class, ambiguous


def test_evaluate_clip_end_to_end(shards):
    result = evaluate_clip("clip-tiny", str(shards), zero_shot=str(SHAPES_TASK), batch_size=16)
    assert result["shards"] == 2 and result["device"] in ("cpu", "cuda")
    retrieval = result["retrieval"]
    assert retrieval["n"] == 40 and retrieval["chance_R@1"] == pytest.approx(1 / 40)
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            assert 0.0 <= retrieval[f"{direction}_R@{k}"] <= 1.0
    zero_shot = result["zero_shot"]
    labelled, no_class, ambiguous = expected_zero_shot_counts(40)
    assert zero_shot["n"] == labelled == sum(zero_shot["class_counts"].values())
    assert (zero_shot["skipped_no_class"], zero_shot["skipped_ambiguous"]) == (no_class, ambiguous)
    assert zero_shot["classes"] == 8 and 0.0 <= zero_shot["top1"] <= zero_shot["top5"] <= 1.0
    assert {k for k, v in zero_shot["class_counts"].items() if v} == set(SHAPES)


def test_cli_on_a_model_folder_writes_eval_json(shards, tmp_path):
    from curate.models.clip import load_clip, save_model_folder

    folder = save_model_folder(load_clip("clip-tiny").model, "clip-tiny", tmp_path / "model")
    app = typer.Typer()
    app.command()(eval_clip)
    args = [str(folder), "--data", str(shards), "--limit", "12", "--batch-size", "5"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = json.loads((folder / "eval.json").read_text())
    assert saved["retrieval"]["n"] == 12 and "zero_shot" not in saved
    assert "retrieval.image_to_text_R@1" in result.output
    bad = CliRunner().invoke(app, [*args, "--zero-shot", "no-such-task"])
    assert isinstance(bad.exception, EvalError) and "no such zero-shot task" in str(bad.exception)
