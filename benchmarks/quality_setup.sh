#!/usr/bin/env bash
# Installs what curate/demo/emoji_corpus.py needs, when missing:
#   - Debian: fonts-noto-color-emoji (the Noto glyphs), libcairo2 (for cairosvg), npm (as root);
#   - PyPI into .venv: pyproject's `bench` extra (emoji: CLDR names and translations; cairosvg);
#   - npm, unpacked into the cache (never into the repository): openmoji, @iconify-json/twemoji,
#     @iconify-json/fluent-emoji-flat, and the icons corpus's @iconify-json/flag, logos, flat-color-icons.
# The cache is $CURATE_QUALITY_CACHE or ~/.cache/curate/quality-corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

need_apt=()
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need_apt+=(fonts-noto-color-emoji)
ldconfig -p 2>/dev/null | grep -q libcairo.so.2 || need_apt+=(libcairo2)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need_apt[*]}; run as root: apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
  echo "installing ${need_apt[*]} (apt-get)"
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

"$PY" -c "import emoji, cairosvg, pycountry" 2>/dev/null || "$PY" -m pip install -q -c constraints.txt -e '.[bench]'  # pyproject's bench extra

# npm packages and the glyph catalogues (idempotent; prints what it fetches)
"$PY" - <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
from curate.demo.emoji_sources import CORPORA, SEED_SOURCES, SOURCES, default_cache, ensure_sources, load_catalogue

for sources in (SOURCES, SEED_SOURCES, CORPORA["icons"]):
    ensure_sources(sources)
    print(f"{'+'.join(sources)}: {len(load_catalogue(sources)):,} distinct pairs in {default_cache()}")
EOF
