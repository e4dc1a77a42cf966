"""Learned heads at decide time: LAION's aesthetic format scored by hand, `curate train head`, the head policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from curate.cli import app
from curate.decide import decide
from curate.heads import HeadError, load_head
from curate.recipe import RecipeError, build_recipe
from curate.report import stats
from curate.report.html import write_report

N = 120


def fake_run(tmp_path, dim: int, model: str, embeddings: np.ndarray) -> dict:
    """A run folder as annotate leaves it: samples, float16 embeddings in two files, the manifest's recipe."""
    keys = [f"{i:06d}" for i in range(len(embeddings))]
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "embeddings").mkdir()
    samples = pa.table(
        {
            "key": keys,
            "url": [f"http://h/{k}.jpg" for k in keys],
            "caption": ["c"] * len(keys),
            "status": ["success"] * len(keys),
            "decode_error": pa.nulls(len(keys), pa.string()),
            "width": [64] * len(keys),
        }
    )
    pq.write_table(samples, run / "samples" / "00000.parquet")
    emb = pa.array(list(embeddings.astype(np.float16)), pa.list_(pa.float16()))
    half = len(keys) // 2
    for name, part in (("00000", slice(0, half)), ("00001", slice(half, None))):
        pq.write_table(
            pa.table({"key": keys[part], "clip_image_emb": emb[part]}), run / "embeddings" / f"{name}.parquet"
        )
    annotate = [{"stage": "image"}, {"stage": "clip", "model": model, "pretrained": None}]
    (run / "manifest.json").write_text(json.dumps({"recipe": {"annotate": annotate}, "steps": {}}))
    return {"run": run, "keys": keys, "annotate": annotate}


def run_decide(run: dict, tmp_path, **policy) -> dict[str, dict]:
    recipe = build_recipe({"annotate": run["annotate"], "decide": [{"policy": "head", **policy}]})
    manifest = run["run"] / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "recipe": recipe.to_dict()}))
    out = run["run"] / "decisions"
    decide(str(run["run"] / "samples" / "*.parquet"), recipe.decide, out, embeddings_dir=run["run"] / "embeddings")
    return {r["key"]: r for r in pq.read_table(out).to_pylist()}


def laion_aesthetic_state(seed: int = 0) -> dict:
    """LAION's improved aesthetic predictor layout: Linear 768-1024-128-64-16-1 at layers 0, 2, 4, 6, 7."""
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(
        torch.nn.Linear(768, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    )
    return {f"layers.{k}": v for k, v in layers.state_dict().items()}


def by_hand(state: dict, x: np.ndarray) -> np.ndarray:
    """The aesthetic MLP in numpy: L2-normalise, then five affine maps (no activation)."""
    h = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    for i in (0, 2, 4, 6, 7):
        h = h @ state[f"layers.{i}.weight"].double().numpy().T + state[f"layers.{i}.bias"].double().numpy()
    return h[:, 0]


def test_laion_aesthetic_head_scores_the_stored_embeddings_like_a_hand_computation(tmp_path):
    x = np.random.default_rng(0).normal(size=(N, 768)).astype(np.float16)
    run = fake_run(tmp_path, 768, "ViT-L-14", x)
    state = laion_aesthetic_state()
    torch.save(state, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    expected = by_hand(state, x)
    cut = float(np.median(expected))
    rows = run_decide(
        run, tmp_path, path=str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth"), reason="low_aesthetic", min_score=cut
    )
    got = np.array([rows[k]["score_low_aesthetic"] for k in run["keys"]])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    rejected = {k for k, r in rows.items() if not r["keep"]}
    assert rejected == {k for k, s in zip(run["keys"], got, strict=True) if s < cut} and len(rejected) == N // 2
    assert {rows[k]["reason"] for k in rejected} == {"low_aesthetic"}
    assert load_head(tmp_path / "sac+logos+ava1-l14-linearMSE.pth").spec.sizes == [768, 1024, 128, 64, 16, 1]


def test_a_head_for_another_clip_model_is_refused_when_the_recipe_is_checked(tmp_path):
    torch.save(laion_aesthetic_state(), tmp_path / "aesthetic.pth")
    annotate = ["image", {"stage": "clip", "model": "ViT-B-32", "pretrained": None}]
    policy = {"policy": "head", "path": str(tmp_path / "aesthetic.pth"), "reason": "low_aesthetic", "min_score": 5}
    with pytest.raises(HeadError, match=r"expects embeddings of CLIP model 'ViT-L-14'.*'ViT-B-32'"):
        build_recipe({"annotate": annotate, "decide": [policy]})
    with pytest.raises(RecipeError, match="not a built-in one"):
        build_recipe({"annotate": annotate, "decide": [{**policy, "reason": "dup_exact"}]})


def test_train_head_on_labelled_keys_then_decide_with_it(tmp_path):
    rng = np.random.default_rng(1)
    direction = rng.normal(size=64)
    x = rng.normal(size=(N * 2, 64))
    marked = x @ direction > 0.5  # "watermarked" images lie along one direction of embedding space
    x[marked] += 0.8 * direction / np.linalg.norm(direction)
    run = fake_run(tmp_path, 64, "lit-offline", x)
    labelled = rng.choice(len(x), 160, replace=False)
    labels = tmp_path / "labels.csv"
    labels.write_text("key,label\n" + "".join(f"{run['keys'][i]},{int(marked[i])}\n" for i in labelled))
    out = tmp_path / "watermark-head"
    result = CliRunner().invoke(
        app, ["train", "head", "--run", str(run["run"]), "--labels", str(labels), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    spec = json.loads((out / "head.json").read_text())
    assert spec["clip_model"] == "lit-offline" and spec["output"] == "sigmoid" and spec["metrics"]["auc"] >= 0.9
    rows = run_decide(run, tmp_path, path=str(out), reason="watermark", max_score=0.5)
    unseen = np.setdiff1d(np.arange(len(x)), labelled)
    rejected = np.array([not rows[run["keys"][i]]["keep"] for i in unseen])
    assert (rejected == marked[unseen]).mean() >= 0.9  # the cut separates the keys it never saw
    (summary,) = stats.heads(run["run"]).rows  # curate stats RUN --heads
    assert summary[:3] == ("watermark", "head", len(x)) and summary[-2:] == (
        "max_score 0.5",
        int(rejected.sum()) + sum(not rows[run["keys"][i]]["keep"] for i in labelled),
    )
    assert "Learned scores" in Path(write_report(str(run["run"]))).read_text()
    rows = run_decide(run, tmp_path, path=str(out), reason="watermark", keep_top=0.25)
    assert sum(r["keep"] for r in rows.values()) == round(0.25 * len(x))


def test_score_policy_cuts_a_classifier_column_with_a_named_reason(tmp_path):
    scores = [0.1, 0.9, None, 0.6, 0.4]
    keys = [f"{i:03d}" for i in range(len(scores))]
    samples = pa.table(
        {
            "key": keys,
            "url": [f"http://h/{k}" for k in keys],
            "caption": ["c"] * 5,
            "status": ["success"] * 5,
            "decode_error": pa.nulls(5, pa.string()),
            "width": [64] * 5,
            "wm_score": pa.array(scores, pa.float32()),
        }
    )
    pq.write_table(samples, tmp_path / "samples.parquet")
    annotate = ["image", {"stage": "classifier", "model": "unused-here", "name": "wm"}]
    policy = {"policy": "score", "column": "wm_score", "reason": "watermark", "max_score": 0.5}
    recipe = build_recipe({"annotate": annotate, "decide": [policy]})
    counts = decide(str(tmp_path / "samples.parquet"), recipe.decide, tmp_path / "decisions")
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "decisions").to_pylist()}
    assert counts == {"watermark": 2} and {k for k, r in rows.items() if not r["keep"]} == {"001", "003"}
