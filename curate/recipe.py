"""Recipes: YAML files listing stages and policies, resolved through explicit registries.

Everything is validated before any work starts; each problem becomes one :class:`RecipeError`
that names the file, the place in it and the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import yaml
from pydantic import BaseModel, ValidationError

from curate import resources
from curate.acquire.download import AcquireConfig
from curate.acquire.inputs import InputConfig
from curate.acquire.raw import BASE_COLUMNS
from curate.decide.balance import Balance
from curate.decide.base import Policy
from curate.decide.blocklist import Blocklist
from curate.decide.dedup import Decontaminate, ExactDedup, NearDedup, SemanticDedup
from curate.decide.head import HeadPolicy, ScoreCut
from curate.decide.thresholds import (
    Availability,
    CaptionBoilerplate,
    CaptionLength,
    ImageSize,
    Language,
)
from curate.decide.thresholds import ClipScore as ClipScorePolicy
from curate.decide.urls import UrlFilter
from curate.emit.shards import EmitConfig
from curate.enrich.recaption import Recaption
from curate.errors import UserError
from curate.signals.caption import CaptionSignals
from curate.signals.classifier import ImageClassifier
from curate.signals.clip import ClipScore
from curate.signals.concepts import ConceptMatch
from curate.signals.hashes import Hashes
from curate.signals.image import ImageSignals
from curate.signals.language import LanguageID
from curate.stage import Stage

STAGES: dict[str, type[Stage]] = {
    s.name: s for s in (ImageSignals, Hashes, CaptionSignals, LanguageID, ClipScore, ConceptMatch, ImageClassifier)
}
"""Annotate stages by the name recipes use."""

ENRICH_STAGES: dict[str, type[Stage]] = {s.name: s for s in (Recaption,)}
"""Enrich stages (run after decide, on kept samples only) by the name recipes use."""

POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (
        UrlFilter,
        Blocklist,
        ImageSize,
        CaptionLength,
        CaptionBoilerplate,
        Language,
        ClipScorePolicy,
        ExactDedup,
        NearDedup,
        SemanticDedup,
        Decontaminate,
        HeadPolicy,
        ScoreCut,
        Balance,
    )
}
"""Decide policies by the name recipes use."""

PIPELINES_DIR = resources.folder("recipe")
"""The bundled recipes (``pipelines/``, inside the wheel as ``curate.pipelines``)."""

SECTIONS = ("name", "description", "input", "acquire", "annotate", "decide", "enrich", "emit", "storage_options")


class RecipeError(UserError):
    """A recipe problem, phrased as what is wrong and how to fix it."""


@dataclass
class Recipe:
    """A validated recipe: configs and instantiated stages and policies, in order.

    Load one with :meth:`from_yaml`, or build one in Python from stage and policy objects
    (``Recipe(annotate=[ImageSignals()], decide=[ImageSize(min_side=64)])``): it passes the same checks
    (:func:`check_columns`). Sections left out get their defaults (annotate: the image stage, which the
    built-in availability check reads); ``input``, ``acquire`` and ``emit`` may be given as dicts.
    """

    name: str = "recipe"
    source: str = "<python>"
    input: InputConfig = field(default_factory=InputConfig)
    acquire: AcquireConfig = field(default_factory=AcquireConfig)
    annotate: list[Stage] = field(default_factory=lambda: [ImageSignals()])
    decide: list[Policy] = field(default_factory=list)
    emit: EmitConfig = field(default_factory=EmitConfig)
    enrich: list[Stage] = field(default_factory=list)
    description: str = ""
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """fsspec options by protocol (``{"s3": {"endpoint_url": ..., "key": ..., "secret": ...}}``); never recorded."""

    def __post_init__(self) -> None:
        for section, model in (("input", InputConfig), ("acquire", AcquireConfig), ("emit", EmitConfig)):
            if isinstance(getattr(self, section), dict):
                setattr(self, section, _config(model, getattr(self, section), f"{self.source}: {section}"))
        _check_types(self)
        check_columns(self)
        self.enrich = [_default_selector(s, self.annotate) for s in self.enrich]

    @classmethod
    def from_yaml(cls, name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
        """A bundled recipe by name (``"demo"``) or a recipe file, with ``key.path=value`` overrides."""
        return load_recipe(name_or_path, overrides)

    @property
    def caption_policy(self) -> str:
        """Which caption emit trains on: the recaption stage's ``caption`` setting, else ``alt``."""
        return next((s.config.caption for s in self.enrich if s.name == "recaption"), "alt")

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (defaults filled in), as recorded in the manifest.

        Without ``storage_options``: they may hold credentials, and a run's readers need them before
        they can read its manifest anyway.
        """
        return {
            "name": self.name,
            "description": self.description,
            "input": self.input.model_dump(),
            "acquire": self.acquire.model_dump(),
            "annotate": [{"stage": s.name, **s.config.model_dump()} for s in self.annotate],
            "decide": [{"policy": p.name, **p.config.model_dump()} for p in self.decide],
            "enrich": [{"stage": s.name, **s.config.model_dump()} for s in self.enrich],
            "emit": self.emit.model_dump(),
        }


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file by path, or by name among the bundled ``pipelines/`` (``demo`` → demo.yaml)."""
    try:
        return resources.resolve("recipe", name_or_path)
    except FileNotFoundError:
        known = ", ".join(list_recipes())
        raise RecipeError(f"{name_or_path}: no such recipe file. Bundled recipes: {known}") from None


def list_recipes() -> list[str]:
    """Names of the recipes that ship with curate."""
    return resources.names("recipe")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (``key.path=value``), validate and instantiate a recipe."""
    path = find_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with sections {', '.join(SECTIONS)}")
    for item in overrides or []:
        apply_override(data, item, path)
    return build_recipe(data, str(path))


def build_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a recipe given as a dict."""
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise RecipeError(f"{source}: unknown section {unknown[0]!r}{_suggest(unknown[0], SECTIONS)}")
    return Recipe(  # checked by Recipe.__post_init__
        name=str(data.get("name") or Path(source).stem),
        description=str(data.get("description") or ""),
        source=source,
        input=_config(InputConfig, data.get("input"), f"{source}: input"),
        acquire=_config(AcquireConfig, data.get("acquire"), f"{source}: acquire"),
        annotate=[
            _entry(e, i, "annotate", "stage", STAGES, source) for i, e in enumerate(_list(data, "annotate", source))
        ],
        decide=[
            _entry(e, i, "decide", "policy", POLICIES, source) for i, e in enumerate(_list(data, "decide", source))
        ],
        enrich=[
            _entry(e, i, "enrich", "stage", ENRICH_STAGES, source) for i, e in enumerate(_list(data, "enrich", source))
        ],
        emit=_config(EmitConfig, data.get("emit"), f"{source}: emit"),
        storage_options=_storage_options(data.get("storage_options"), source),
    )


def _check_types(recipe: Recipe) -> None:
    """Each section holds what it names: a recipe built in Python can mix up a stage and a policy."""
    lists = {"annotate": (recipe.annotate, Stage), "decide": (recipe.decide, Policy), "enrich": (recipe.enrich, Stage)}
    for section, (entries, kind) in lists.items():
        for i, entry in enumerate(entries):
            if not isinstance(entry, kind):
                what = "a stage (curate.stages.*)" if kind is Stage else "a policy (curate.policies.*)"
                raise RecipeError(f"{recipe.source}: {section}[{i}]: expected {what}, got {entry!r}")
    configs = {"input": (recipe.input, InputConfig), "acquire": (recipe.acquire, AcquireConfig)}
    for section, (value, model) in {**configs, "emit": (recipe.emit, EmitConfig)}.items():
        if not isinstance(value, model):
            raise RecipeError(f"{recipe.source}: {section} must be a {model.__name__}, got {value!r}")


def _storage_options(value: Any, source: str) -> dict[str, dict[str, Any]]:
    """``storage_options``: a mapping from fsspec protocol (``s3``, ``gcs``, ...) to that filesystem's options."""
    value = value or {}
    fix = "e.g. 'storage_options: {s3: {endpoint_url: https://minio.example:9000}}'"
    if not isinstance(value, dict):
        raise RecipeError(f"{source}: storage_options must map a protocol to its options, {fix}")
    known = fsspec.available_protocols()
    for protocol, options in value.items():
        if protocol not in known:
            raise RecipeError(
                f"{source}: storage_options: unknown protocol {protocol!r}{_suggest(str(protocol), known)}"
            )
        if not isinstance(options, dict):
            raise RecipeError(f"{source}: storage_options.{protocol} must be a mapping of options, {fix}")
    return {str(p): dict(o) for p, o in value.items()}


def _default_selector(stage: Stage, annotate: list[Stage]) -> Stage:
    """``recaption`` with ``caption: both`` selects with the annotate clip stage's model by default."""
    clip = next((s for s in annotate if s.name == "clip"), None)
    cfg = stage.config
    if stage.name != "recaption" or cfg.caption != "both" or cfg.select_model or clip is None:
        return stage
    update = {"select_model": clip.config.model, "select_pretrained": clip.config.pretrained}
    return type(stage)(cfg.model_copy(update=update))


IMG2DATASET_COLUMNS = ("width", "height", "exif", "md5", "sha256", "sha512")
"""Columns img2dataset may add to its per-shard Parquet."""


def reserved_columns() -> dict[str, str]:
    """Column names curate writes itself, each with its writer: input columns may not use them."""
    reserved = dict.fromkeys((*BASE_COLUMNS, "fetchable"), "curate")
    reserved |= dict.fromkeys(IMG2DATASET_COLUMNS, "img2dataset")
    for stage in (*STAGES.values(), *ENRICH_STAGES.values()):
        reserved |= dict.fromkeys((*stage.writes, *stage.embedding_columns), f"stage {stage.name!r}")
    return reserved


def check_input_columns(recipe: Recipe) -> None:
    """``input.save_additional_columns`` may not repeat a name or clash with a column curate writes."""
    names = recipe.input.save_additional_columns
    reserved = reserved_columns()
    for i, name in enumerate(names):
        if name in names[:i]:
            raise RecipeError(f"{recipe.source}: input.save_additional_columns names {name!r} twice")
        if name in reserved:
            raise RecipeError(
                f"{recipe.source}: input.save_additional_columns: {name!r} is a column {reserved[name]} writes. "
                f"Rename that column in the URL list, or leave it out."
            )


def check_columns(recipe: Recipe) -> None:
    """Every stage and policy must read only columns that exist by the time it runs."""
    check_input_columns(recipe)
    available = set(BASE_COLUMNS) | set(recipe.input.save_additional_columns)
    for i, stage in enumerate(recipe.annotate):
        missing = [c for c in stage.reads if c not in available]
        if missing:
            raise RecipeError(
                f"{recipe.source}: annotate[{i}] (stage {stage.name!r}) reads {missing}, which no "
                f"earlier stage writes. Move it after the stage that writes them."
            )
        available |= set(stage.writes)
    for i, stage in enumerate(recipe.enrich):
        missing = [c for c in stage.reads if c not in available and c != "image"]  # enrich re-reads the bytes
        if missing:
            raise RecipeError(
                f"{recipe.source}: enrich[{i}] (stage {stage.name!r}) reads {missing}, which no annotate stage writes."
            )
    writers = {c: s.name for s in STAGES.values() for c in s.writes}
    for i, policy in enumerate([Availability(), *recipe.decide]):
        missing = [c for c in policy.reads if c not in available]
        if missing:
            where = "the built-in availability check" if i == 0 else f"decide[{i - 1}] (policy {policy.name!r})"
            hint = ", ".join(sorted({f"'- stage: {writers[c]}'" for c in missing if c in writers}))
            raise RecipeError(
                f"{recipe.source}: {where} reads {missing}, which no annotate stage writes. "
                f"Add {hint or 'a stage that writes them'} to annotate."
            )
    for policy in recipe.decide:
        policy.check(recipe)


def apply_override(data: dict[str, Any], item: str, source: Path | str = "<recipe>") -> None:
    """Apply one ``--set`` item: ``acquire.timeout=5`` or ``decide.image_size.min_side=128``."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set acquire.timeout=5")
    dotted, _, text = item.partition("=")
    value = yaml.safe_load(text) if text else None
    parts = dotted.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, parts[: depth + 1], data, source)
    if isinstance(node, list):
        raise RecipeError(f"--set {item!r}: name an entry of {'.'.join(parts[:-1])} and then a parameter")
    node[parts[-1]] = value


def _child(node: Any, part: str, path: list[str], root: dict, source: Path | str) -> Any:
    if isinstance(node, list):
        tag = "policy" if path[0] == "decide" else "stage"
        for entry in node:
            if isinstance(entry, dict) and entry.get(tag) == part:
                return entry
        if path[0] in ("enrich", "decide"):  # --set may add a policy (applied last) or an enrich stage
            node.append({tag: part})
            return node[-1]
        names = [e.get(tag) for e in node if isinstance(e, dict)]
        raise RecipeError(
            f"--set {'.'.join(path)}: {source} has no {path[0]} entry {part!r} (entries: {names}). "
            f"Add '- {tag}: {part}' to {path[0]} in the recipe first."
        )
    if not isinstance(node, dict):
        raise RecipeError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} is not a section")
    if node.get(part) is None:
        node[part] = [] if (node is root and part in ("annotate", "decide", "enrich")) else {}
    return node[part]


def _list(data: dict, section: str, source: str) -> list:
    value = data.get(section) or []
    if not isinstance(value, list):
        raise RecipeError(f"{source}: {section} must be a list of entries like '- stage: NAME'")
    return value


def _entry(entry: Any, index: int, section: str, tag: str, registry: dict, source: str):
    where = f"{source}: {section}[{index}]"
    if isinstance(entry, str):
        entry = {tag: entry}
    if not isinstance(entry, dict) or tag not in entry:
        raise RecipeError(f"{where}: each entry needs '{tag}: NAME' (known: {', '.join(sorted(registry))})")
    params = dict(entry)
    name = params.pop(tag)
    if name not in registry:
        raise RecipeError(
            f"{where}: unknown {tag} {name!r}{_suggest(str(name), registry)}. "
            f"Known {tag}s: {', '.join(sorted(registry))}"
        )
    cls = registry[name]
    return cls(_config(cls.Config, params, f"{where} ({tag} {name!r})"))


def _config(model: type[BaseModel], params: Any, where: str) -> Any:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RecipeError(f"{where}: expected a mapping of parameters, got {params!r}")
    try:
        return model(**params)
    except ValidationError as err:
        raise RecipeError(_explain(err, model, where)) from None


def _explain(err: ValidationError, model: type[BaseModel], where: str) -> str:
    first = err.errors()[0]
    name = ".".join(str(p) for p in first["loc"])
    known = sorted(model.model_fields)
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown parameter {name!r}{_suggest(name, known)}. Known parameters: {', '.join(known)}"
    field_info = model.model_fields.get(str(first["loc"][0])) if first["loc"] else None
    doc = f" ({field_info.description})" if field_info and field_info.description else ""
    return f"{where}: parameter {name!r}: {first['msg']}, got {first.get('input')!r}{doc}"


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
