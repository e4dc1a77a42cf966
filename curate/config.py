"""One config language: YAML files, ``KEY.PATH=VALUE`` overrides, pydantic validation, one explanation.

Recipes, trainer presets, eval specs and zero-shot tasks all go through here, so they read, take
``--set`` and fail the same way::

    path, data = read_yaml("train", "clip-tiny", "preset", PresetError)   # a file, or a bundled name
    apply_overrides(data, ["steps=50", "betas.0=0.8"], path, PresetError)   # VALUE is parsed as YAML
    cfg = validate(ClipTrainConfig, data, str(path), PresetError)

:func:`load` does all three. Overrides are ``KEY.PATH=VALUE`` strings (the CLI's ``--set``) or a
``{"key.path": value}`` mapping (Python callers). A path walks mappings by key and lists by index,
or, in lists of named entries (a recipe's ``decide: [- policy: image_size]``), by the entry's name:
``decide.image_size.min_side=128``. Every problem is one line naming the file, the place (a dotted
path), a "did you mean" for typos, and the field's description as the fix.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from curate import resources
from curate.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
Overrides = Sequence[str] | Mapping[str, Any] | None
"""``["KEY.PATH=VALUE", ...]`` (``--set``) or ``{"KEY.PATH": value}``."""
Entries = Mapping[str, tuple[str, bool]]
"""Top-level lists of named entries: section -> (the key naming an entry, whether ``--set`` may add one)."""
LABELS = {
    "recipe": "recipe",
    "train": "preset",
    "eval": "eval spec",
    "model": "model config",
    "cluster": "cluster config",
}
"""What a file of each kind of :data:`curate.resources.KINDS` is called in messages."""


def load(
    model: type[M],
    kind: str,
    name_or_path: str | Path,
    overrides: Overrides = None,
    error: type[ConfigError] = ConfigError,
) -> M:
    """Read a YAML file of ``kind`` (a path, or a bundled name), apply ``overrides``, validate into ``model``."""
    path, data = read_yaml(kind, name_or_path, LABELS[kind], error)
    keys = apply_overrides(data, overrides, path, error)
    return validate(model, data, str(path), error, keys)


def read_yaml(
    kind: str, name_or_path: str | Path, label: str = "config", error: type[ConfigError] = ConfigError
) -> tuple[Path, dict[str, Any]]:
    """The file at ``name_or_path`` (else the bundled ``kind`` of that name) and its mapping."""
    path = find(kind, name_or_path, label, error)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {label} file is a mapping of keys to values, got {type(data).__name__}")
    return path, data


def find(kind: str, name_or_path: str | Path, label: str = "config", error: type[ConfigError] = ConfigError) -> Path:
    """The file at ``name_or_path``, else the bundled ``kind`` of that name; a missing one names the bundled ones."""
    try:
        return resources.resolve(kind, name_or_path)
    except FileNotFoundError:
        known = ", ".join(resources.names(kind))
        raise error(f"{name_or_path}: no such {label} file. Bundled {label}s: {known}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where, and what."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + " ".join(str(getattr(err, "problem", None) or err).split())


def parse_override(item: str, error: type[ConfigError] = ConfigError) -> tuple[str, Any]:
    """``"a.b=VALUE"`` -> ``("a.b", value)`` with VALUE parsed as YAML (``a.b=`` is null)."""
    if "=" not in item:
        raise error(f"--set {item!r}: expected KEY=VALUE (a dotted KEY, a YAML VALUE), e.g. --set steps=50")
    dotted, _, text = item.partition("=")
    try:
        return dotted.strip(), yaml.safe_load(text) if text else None
    except yaml.YAMLError as err:
        raise error(f"--set {item!r}: VALUE is not valid YAML: {_yaml_problem(err)}") from None


def _pairs(overrides: Overrides, error: type[ConfigError]) -> Iterator[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        yield from ((str(k), v) for k, v in overrides.items())
    else:
        yield from (parse_override(item, error) for item in overrides or [])


def apply_overrides(
    data: dict[str, Any],
    overrides: Overrides,
    source: str | Path = "<config>",
    error: type[ConfigError] = ConfigError,
    entries: Entries | None = None,
) -> list[str]:
    """Apply each override to ``data`` in place; returns the dotted keys set (for error messages)."""
    keys = []
    for dotted, value in _pairs(overrides, error):
        set_value(data, dotted, value, source, error, entries)
        keys.append(dotted)
    return keys


def set_value(
    data: dict[str, Any],
    dotted: str,
    value: Any,
    source: str | Path = "<config>",
    error: type[ConfigError] = ConfigError,
    entries: Entries | None = None,
) -> None:
    """Set ``data[a][b]... = value`` for ``dotted`` = ``a.b...``, creating missing mappings."""
    parts = dotted.split(".")
    if not all(parts):
        raise error(f"--set {dotted!r}: a KEY is names joined by dots, e.g. stage1.steps")
    node: Any = data
    for depth in range(1, len(parts)):
        node = _child(node, parts[:depth], data, source, error, entries or {})
    leaf = parts[-1]
    if not isinstance(node, dict | list):
        raise error(f"--set {dotted}: {'.'.join(parts[:-1])} is a value, not a section")
    if isinstance(node, list):
        if not leaf.isdigit() or int(leaf) >= len(node):
            raise error(f"--set {dotted}: {'.'.join(parts[:-1])} is a list: name an entry, then a parameter")
        node[int(leaf)] = value
    else:
        node[leaf] = value


def _child(node: Any, path: list[str], root: dict, source: str | Path, error: type[ConfigError], entries: Entries):
    """The mapping or list at ``path[-1]`` under ``node``: by key, by index, or by entry name."""
    part, where = path[-1], ".".join(path)
    if isinstance(node, list):
        return _entry(node, path, source, error, entries)
    if not isinstance(node, dict):
        raise error(f"--set {where}: {'.'.join(path[:-1])} is a value, not a section")
    if node.get(part) is None:
        node[part] = [] if (node is root and part in entries) else {}
    return node[part]


def _entry(node: list, path: list[str], source: str | Path, error: type[ConfigError], entries: Entries) -> Any:
    part, section = path[-1], path[0]
    if part.isdigit() and int(part) < len(node):
        return node[int(part)]
    tag, may_add = entries.get(section, ("name", False))
    for i, entry in enumerate(node):
        if isinstance(entry, str) and entry == part:  # the short form '- image'
            node[i] = {tag: entry}
            return node[i]
        if isinstance(entry, dict) and entry.get(tag) == part:
            return entry
    if may_add:
        node.append({tag: part})
        return node[-1]
    names = [e if isinstance(e, str) else e.get(tag) for e in node if isinstance(e, str | dict)]
    raise error(
        f"--set {'.'.join(path)}: {source} has no {section} entry {part!r}{suggest(part, names)} "
        f"(entries: {names}). Add '- {tag}: {part}' to {section} first."
    )


def validate(
    model: type[M], params: Any, where: str, error: type[ConfigError] = ConfigError, overridden: Iterable[str] = ()
) -> M:
    """``model`` from ``params``; a problem is one ``error`` naming ``where``, the place and the fix.

    ``overridden``: dotted keys set by ``--set``; a problem at one of them names the ``--set``.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise error(f"{where}: expected a mapping of parameters, got {params!r}")
    try:
        return model.model_validate(params)
    except ValidationError as err:
        loc = ".".join(str(p) for p in err.errors()[0]["loc"])
        setby = next((k for k in overridden if f"{loc}.".startswith(f"{k}.") or k.startswith(f"{loc}.")), None)
        raise error(explain(err, model, f"{where} (--set {setby})" if setby else where)) from None


def explain(err: ValidationError, model: type[BaseModel], where: str) -> str:
    """The first problem of ``err`` on one line: where, which parameter, what was given, the fix."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    name = ".".join(loc)
    owner, info = field_at(model, loc)
    if first["type"] == "extra_forbidden":
        fields = owner.model_fields if owner else {}
        hint = suggest(loc[-1], fields, {k: f.description or "" for k, f in fields.items()})
        return f"{where}: unknown parameter {name!r}{hint}. Known parameters: {', '.join(sorted(fields))}"
    doc = f" ({info.description})" if info and info.description else ""
    if not loc:  # a check across fields
        return f"{where}: {first.get('ctx', {}).get('error') or first['msg']}"
    if first["type"] == "missing":
        return f"{where}: missing parameter {name!r}{doc}"
    return f"{where}: parameter {name!r}: {first['msg']}, got {first.get('input')!r}{doc}"


def field_at(model: type[BaseModel], loc: list[str]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """Following ``loc`` through nested models: the model where it leaves them, and the last field on the way."""
    owner: type[BaseModel] | None = model
    info = None
    for part in loc:
        if owner is None or part not in owner.model_fields:
            break
        info = owner.model_fields[part]
        owner = _model_in(info.annotation)
    return owner, info


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``Spec``, ``Spec | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for a in typing.get_args(annotation) if (m := _model_in(a))), None)
    return None


def suggest(word: str, options: Iterable[Any], descriptions: Mapping[str, str] | None = None) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or nothing.

    With ``descriptions`` (option -> text), a name of several words that is close to no option is
    looked up in them: ``learning_rate`` finds ``lr``, described as "Peak learning rate".
    """
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    if not close and descriptions:
        close = _described(word, descriptions)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _described(word: str, descriptions: Mapping[str, str], cutoff: float = 0.8) -> list[str]:
    """The option whose description holds the words of ``word`` (split at ``_``), best match first."""
    phrase = word.lower().replace("_", " ").replace("-", " ").split()
    if len(phrase) < 2:  # one word matches too many descriptions by chance
        return []
    scored = []
    for name, text in descriptions.items():
        words = re.findall(r"[a-z0-9]+", text.lower())
        spans = (" ".join(words[i : i + len(phrase)]) for i in range(len(words) - len(phrase) + 1))
        best = max((difflib.SequenceMatcher(None, " ".join(phrase), s).ratio() for s in spans), default=0.0)
        scored.append((best, name))
    best, name = max(scored, default=(0.0, ""))
    return [name] if best >= cutoff else []
