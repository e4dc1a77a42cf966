#!/usr/bin/env bash
# The GPU measurements of issue 21 in one prepared script, for a lent GPU machine (fresh clone, install
# included, under ~8 minutes on one H100/H200). It runs, each bounded by `timeout` and recorded even if it fails:
#   1. the clip stage end to end (benchmarks/clipscore.py): ViT-B/32 (random weights), batch sizes x actor
#      counts, with Pillow decode on CPU tasks against nvJPEG decode in the actors (`decode: device`);
#   2. recaption with a 0.5B-parameter LM (benchmarks/recaption.py --sizes 0.5b, random weights);
#   3. `curate train clip` ViT-B/32 samples/s against `open_clip_train.main` on the same shards
#      (benchmarks/train_clip.py, bf16).
# Results: one JSON per part and the summary $OUT/device.json (GPU, torch, each part's status and wall time).
#
#   bash benchmarks/device.sh                 # on the GPU machine
#   bash benchmarks/device.sh --dry-run       # tiny sizes on CPU with the current venv (make test runs this)
#
# Install: without .venv it makes one with --system-site-packages (so a CUDA torch already on the machine is
# used as is; the CPU pin in constraints.txt is NOT applied) and installs the project; set WHEELHOUSE=DIR to
# install from local wheels on a machine without internet.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
OUT=benchmarks/results/device
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: $0 [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1

if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
else
  PY=.venv/bin/python
  if [ ! -x "$PY" ]; then python3 -m venv --system-site-packages .venv; fi
  if ! "$PY" -c "import curate, open_clip, ray, duckdb" 2>/dev/null; then
    echo "installing the project into .venv"
    "$PY" -m pip install -q ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} -e .
  fi
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'"
fi

if [ "$DRY" = 1 ]; then
  # every code path once, at the least work that does it (no warm-up runs: these numbers are not measurements)
  CLIP=(--models clip-tiny --batch-sizes 16 --actors 1 --n 32 --decode cpu device --no-warmup)
  RECAP=(--sizes tiny --batch-sizes 4 --n 4 --max-new-tokens 4 --no-warmup)
  TRAIN=(--model clip-tiny --batch-size 16 --steps 2 --skip 1 --warmup 1 --n 64 --per-shard 32 --repeats 1 --device cpu)
else
  CLIP=(--models ViT-B-32 --batch-sizes 256 1024 --actors 1 2 --n 20000 --decode cpu device)
  RECAP=(--sizes 0.5b --batch-sizes 32 128 --n 512 --max-new-tokens 32)
  TRAIN=(--model ViT-B-32 --batch-size 256 --steps 60 --skip 10 --n 20000 --per-shard 2000 --repeats 1
         --precision bf16 --workers 8 --device cuda)
fi

STATUS=()
part() {  # part NAME LIMIT_S SCRIPT ARGS...: run one measurement, keep going if it fails
  local name=$1 limit=$2 script=$3; shift 3
  local start=$SECONDS rc=0
  echo "== $name: $script $*"
  [ "$DRY" = 1 ] && limit=900  # CPU sizes are tiny but a loaded CI machine is slow to start processes
  timeout "$limit" "$PY" "benchmarks/$script" "$@" --out "$OUT/$name.json" || rc=$?
  STATUS+=("$name:$rc:$((SECONDS - start))")
}
part clip_stage 240 clipscore.py "${CLIP[@]}"
part recaption 150 recaption.py "${RECAP[@]}"
part train_clip 180 train_clip.py "${TRAIN[@]}"

"$PY" - "$OUT" "$DRY" "${STATUS[@]}" <<'PYEOF'
"""Summary: environment and each part's exit status, wall time and results, in OUT/device.json."""
import json, platform, sys
from pathlib import Path

import torch

out, dry, parts = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
summary = {
    "dry_run": dry,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__,
    "python": platform.python_version(),
    "parts": {},
}
for entry in parts:
    name, rc, wall = entry.split(":")
    result = out / f"{name}.json"
    summary["parts"][name] = {
        "exit_status": int(rc),
        "wall_s": int(wall),
        "result": json.loads(result.read_text()) if result.exists() and int(rc) == 0 else None,
    }
(out / "device.json").write_text(json.dumps(summary, indent=2))
failed = [n for n, p in summary["parts"].items() if p["exit_status"] != 0]
print(f"wrote {out / 'device.json'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
PYEOF
