"""Files that ship with curate: recipes (``pipelines/``) and configs (``configs/``).

Both folders live at the repository root and ship inside the wheel as the packages
``curate.pipelines`` and ``curate.configs`` (``package-dir`` in pyproject.toml), so an installed
curate finds them through :mod:`importlib.resources` with no checkout. In a source checkout (an
editable install, or ``PYTHONPATH`` pointing at it) the checkout's own folders are used, so the
files always come from the same tree as the code.

Every lookup of a bundled file goes through :func:`resolve`: a path that exists wins (users' own
files), else a bundled name (``demo``, ``clip-tiny``, ``configs/train/clip-tiny.yaml``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path, PurePosixPath

KINDS: dict[str, tuple[str, str, str]] = {
    "recipe": ("pipelines", "", ".yaml"),
    "train": ("configs", "train", ".yaml"),
    "model": ("configs", "models", ".json"),
    "eval": ("configs", "eval", ".yaml"),
    "cluster": ("configs", "cluster", ".yaml"),
}
"""Kind -> (package folder, subfolder, suffix) of the bundled files."""

CHECKOUT = Path(__file__).resolve().parents[1]


def package_root(package: str) -> Path:
    """The folder of ``pipelines`` or ``configs``: the source checkout's, else the installed package's."""
    local = CHECKOUT / package
    if (CHECKOUT / "pyproject.toml").is_file() and (local / "__init__.py").is_file():
        return local
    return Path(str(files(f"curate.{package}")))  # a wheel is installed unzipped: a real folder


def _spec(kind: str) -> tuple[str, str, str]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind of bundled file {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind]


def folder(kind: str) -> Path:
    """The folder holding the bundled files of ``kind`` (see :data:`KINDS`)."""
    package, sub, _ = _spec(kind)
    return package_root(package) / sub if sub else package_root(package)


def names(kind: str) -> list[str]:
    """Names of the bundled files of ``kind`` (file stems: ``demo``, ``clip-tiny``)."""
    return sorted(p.stem for p in folder(kind).glob(f"*{_spec(kind)[2]}"))


def bundled(kind: str, name: str | Path) -> Path | None:
    """The bundled file of ``kind`` called ``name``, or None.

    ``name`` may be a stem (``clip-tiny``), a file name (``clip-tiny.yaml``) or the path the file
    has in the repository (``configs/train/clip-tiny.yaml``), so documented paths work anywhere.
    """
    package, sub, suffix = _spec(kind)
    pure = PurePosixPath(Path(name).as_posix())
    home = PurePosixPath(package, sub) if sub else PurePosixPath(package)
    if len(pure.parts) > 1 and pure.parent != home:
        return None
    stem = pure.name.removesuffix(suffix)  # names may hold dots: llava-qwen-0.5b
    path = folder(kind) / f"{stem}{suffix}"
    return path if path.is_file() else None


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """A file that exists at ``name_or_path``, else the bundled file of that name; FileNotFoundError otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    found = bundled(kind, name_or_path)
    if found is None:
        raise FileNotFoundError(f"{name_or_path}: no such file, and no bundled {kind} of that name ({names(kind)})")
    return found
