#!/usr/bin/env bash
# The served CUDA path of one tree, in well under 4 minutes on one H100/H200:
#   1. the CUDA parity tests of the fast and graph backends against eager (pytest -m gpu over
#      tests/engines: cuda_graphs, backends_gpu; TensorRT tests skip where it is absent);
#   2. `ragturbo bench service --device cuda`: an SD-Turbo-sized model with random weights
#      (fp16), backend fast, N synthetic pairs searched inside the graph, closed-loop clients
#      over loopback (JPEG, k=1, mode adapter), as the PERF figures are taken, but shorter.
# Prints one line per figure, prefixed with the tree's name.
#
# Usage, from the root of any checkout on the device machine (run it once per tree in one call):
#   bash lab/bench/seam_gpu.sh /path/to/old-tree; bash lab/bench/seam_gpu.sh /path/to/new-tree
# Wheels: the device has torch 2.11 but no diffusers/fastapi/pydantic/qdrant: carry the .whl
# folder made by ../shared/tools/device-wheels.sh (WHL, default ./.whl); they are installed
# once into /tmp/site. Knobs (env): CLIENTS (1,16) PAIRS (10000) BENCH_SECONDS (4) BUCKETS (1,4,16)
# MAX_BATCH (16) INPROCESS ('' = skip the in-process rows; e.g. 1,16) TESTS (1; 0 skips pytest).
# The Inductor cache is shared by the trees (/tmp/seam-compile-cache): the first tree's server
# compiles cold, the second's reuses what is equal; "ready_s" says which ("cache").
set -uo pipefail
TREE="$(cd "${1:?usage: seam_gpu.sh TREE}" && pwd)"
NAME="$(basename "$TREE")"
WHL="${WHL:-$PWD/.whl}"
if [ ! -f /tmp/site/.seam-installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHL"/*.whl && touch /tmp/site/.seam-installed || exit 1
fi
OUTDIR="${OUT:-/tmp/seam-out}/$NAME"
mkdir -p "$OUTDIR"
cd "$TREE" || exit 1
export PYTHONPATH="/tmp/site:$TREE"
export TORCHINDUCTOR_CACHE_DIR=/tmp/seam-compile-cache/inductor TRITON_CACHE_DIR=/tmp/seam-compile-cache/triton
card="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
echo "$NAME card=$card tree=$TREE commit=$(git -C "$TREE" rev-parse --short HEAD 2>/dev/null || echo none)"

if [ "${TESTS:-1}" = 1 ]; then
  t0=$(date +%s)
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/engines/test_engines_cuda_graphs.py \
    tests/engines/test_engines_backends_gpu.py > "$OUTDIR/pytest.log" 2>&1
  rc=$?
  echo "$NAME parity_tests rc=$rc $(tail -1 "$OUTDIR/pytest.log") ($(( $(date +%s) - t0 )) s)"
  [ $rc = 0 ] || grep -E "^(FAILED|ERROR)" "$OUTDIR/pytest.log" | sed "s/^/$NAME   /"
fi

t0=$(date +%s)
timeout 200 python3 -m ragturbo.cli bench service --device cuda --clients "${CLIENTS:-1,16}" \
  --pairs "${PAIRS:-10000}" --seconds "${BENCH_SECONDS:-4}" --max-batch "${MAX_BATCH:-16}" --max-wait-ms 0 \
  --buckets "${BUCKETS:-1,4,16}" --inprocess-batch "${INPROCESS:-}" --inprocess-variants fast \
  --inprocess-budget-s 40 --startup-timeout-s 150 --out "$OUTDIR/bench" > "$OUTDIR/bench.log" 2>&1
rc=$?
echo "$NAME bench_service rc=$rc ($(( $(date +%s) - t0 )) s; log $OUTDIR/bench.log)"
python3 - "$OUTDIR/bench/bench-service.json" "$NAME" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
try:
    r = json.load(open(path))
except (OSError, ValueError) as e:
    print(f"{name} bench_service no result ({e})")
    raise SystemExit(0)
for s in r.get("servers", []):
    print(f"{name} server pairs={s['pairs']} ready_s={s['ready_s']} cache={s['cache']}")
for row in r.get("rows", []):
    st = row["stages_ms"]
    print(f"{name} pairs={row['pairs']} clients={row['clients']} p50_ms={row['p50_ms']} p99_ms={row['p99_ms']} "
          f"images_per_s={row['images_per_s']} mean_batch={row['mean_batch']} errors={row['errors']} "
          + " ".join(f"{k}_ms={v}" for k, v in st.items()))
for row in (r.get("inprocess") or {}).get("rows", []):
    print(f"{name} inprocess " + " ".join(f"{k}={v}" for k, v in row.items() if isinstance(v, (int, float, str))))
EOF
