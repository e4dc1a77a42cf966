"""Recipes: YAML files listing stages and policies, resolved through explicit registries.

Everything is validated before any work starts; each problem becomes one :class:`RecipeError`
that names the file, the place in it and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from curate import config, resources
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
    ClipScoreFilter,
    ImageSize,
    Language,
)
from curate.decide.urls import UrlFilter
from curate.emit.shards import EmitConfig
from curate.enrich.recaption import Recaption
from curate.errors import RecipeError
from curate.signals.caption import CaptionSignals
from curate.signals.classifier import ImageClassifier
from curate.signals.clip import ClipScorer
from curate.signals.concepts import ConceptMatch
from curate.signals.hashes import Hashes
from curate.signals.image import ImageSignals
from curate.signals.language import LanguageID
from curate.stage import Stage

STAGES: dict[str, type[Stage]] = {
    s.name: s for s in (ImageSignals, Hashes, CaptionSignals, LanguageID, ClipScorer, ConceptMatch, ImageClassifier)
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
        ClipScoreFilter,
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


ENTRIES: config.Entries = {"annotate": ("stage", False), "decide": ("policy", True), "enrich": ("stage", True)}
"""Lists of named entries, for ``--set decide.image_size.min_side=128``; ``--set`` may add a policy (applied
last) or an enrich stage (``--set enrich.recaption.model=...``), not an annotate stage (order matters)."""


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
    return config.find("recipe", name_or_path, "recipe", RecipeError)


def list_recipes() -> list[str]:
    """Names of the recipes that ship with curate."""
    return resources.names("recipe")


def load_recipe(name_or_path: str | Path, overrides: config.Overrides = None) -> Recipe:
    """Read, override (``key.path=value``, see :mod:`curate.config`), validate and instantiate a recipe."""
    path, data = config.read_yaml("recipe", name_or_path, "recipe", RecipeError)
    apply_overrides(data, overrides, path)
    return build_recipe(data, str(path))


def apply_overrides(data: dict[str, Any], overrides: config.Overrides, source: Path | str = "<recipe>") -> None:
    """Apply ``--set`` items to a recipe mapping: ``acquire.timeout=5``, ``decide.image_size.min_side=128``."""
    config.apply_overrides(data, overrides, source, RecipeError, ENTRIES)


def apply_override(data: dict[str, Any], item: str, source: Path | str = "<recipe>") -> None:
    """Apply one ``--set`` item (see :func:`apply_overrides`)."""
    apply_overrides(data, [item], source)


def build_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a recipe given as a dict."""
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise RecipeError(f"{source}: unknown section {unknown[0]!r}{config.suggest(unknown[0], SECTIONS)}")
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
                f"{source}: storage_options: unknown protocol {protocol!r}{config.suggest(str(protocol), known)}"
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
    writers = {c: f"'- stage: {s.name}'" for s in STAGES.values() for c in s.writes}
    writers |= {c: f"'- stage: {s.name}' with '{how}'" for s in STAGES.values() for c, how in s.optional_writes.items()}
    for i, policy in enumerate([Availability(), *recipe.decide]):
        missing = [c for c in policy.reads if c not in available]
        if missing:
            where = "the built-in availability check" if i == 0 else f"decide[{i - 1}] (policy {policy.name!r})"
            hint = ", ".join(sorted({writers[c] for c in missing if c in writers}))
            raise RecipeError(
                f"{recipe.source}: {where} reads {missing}, which no annotate stage writes. "
                f"Add {hint or 'a stage that writes them'} to annotate."
            )
    for policy in recipe.decide:
        policy.check(recipe)


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
            f"{where}: unknown {tag} {name!r}{config.suggest(str(name), registry)}. "
            f"Known {tag}s: {', '.join(sorted(registry))}"
        )
    cls = registry[name]
    return cls(_config(cls.Config, params, f"{where} ({tag} {name!r})"))


def _config(model: type[Any], params: Any, where: str) -> Any:
    return config.validate(model, params, where, RecipeError)
