#!/usr/bin/env bash
# Issue 17, one device call (<= 300 s on one H200): the tuned peer and the fast backend with the
# full and the small VAE decoder at batches 1, 4, 8, 16, plus the fp8-UNet lever, in one process
# (lab/bench/gpu17.py). Writes $OUT/gpu17.json and $OUT/gpu17.md after every job.
# The device has torch 2.11 but no diffusers: carry the wheels folder .whl made by
# ../shared/tools/device-wheels.sh (run from the project root), then run from the repo root:
#   bash lab/bench/gpu17.sh            (BUDGET_S=255 by default; extra args go to gpu17.py)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
OUT="${OUT:-out/gpu17}"  # the device machine sets $OUT (the folder that comes back)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/card.txt" 2>/dev/null || true
exec python3 -m lab.bench.gpu17 --out "$OUT" --budget-s "${BUDGET_S:-255}" "$@"
