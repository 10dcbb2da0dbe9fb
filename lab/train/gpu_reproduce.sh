#!/usr/bin/env bash
# The shipped toy adapter's recipe (training/recipes/toy-adapter.yaml), scaled to one device
# call, through the product's commands only: teacher targets (`ragturbo train teacher-samples`),
# the adapter run and its control side by side on the GPU (`ragturbo train adapter --config`,
# the same rows and batches), export, and the 400-prompt x 4-seed fidelity table with paired
# intervals against the shipped adapter (`ragturbo toyworld eval --work`: row adapter-real).
# Results are copied to $OUT as each stage ends (7 files: card.md, log.txt, train.tar,
# adapter.safetensors, control.safetensors, eval.json, eval.md).
# Usage (repo root, GPU machine): bash lab/train/gpu_reproduce.sh
# Env: OUT (out/reproduce), WORK (/tmp/repro), ROWS (adapter-split rows, 40000), STEPS (4000),
# TRAIN_S (time limit of each run, 170), SEEDS (4), NRET (retrieval-split pairs, 10000), DEVICE (cuda;
# cpu with small ROWS/STEPS/NRET/SEEDS is a dry run of the script), WHL (a dir of wheels to install under
# /tmp/site first, default .whl; `../shared/tools/device-wheels.sh` makes it), PY (python3).
set -o pipefail
OUT=${OUT:-out/reproduce}; W=${WORK:-/tmp/repro}; PY=${PY:-python3}; WHL=${WHL:-.whl}
ROWS=${ROWS:-40000}; STEPS=${STEPS:-4000}; TRAIN_S=${TRAIN_S:-170}; SEEDS=${SEEDS:-4}; NRET=${NRET:-10000}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W"
T0=$SECONDS
card() { echo "- $(date -u +%T) +$((SECONDS - T0)) s: $*" | tee -a "$OUT/card.md"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null; date -u +%FT%TZ
  git rev-parse --short HEAD 2>/dev/null; echo "ROWS=$ROWS STEPS=$STEPS TRAIN_S=$TRAIN_S SEEDS=$SEEDS NRET=$NRET DEVICE=$DEVICE"; } > "$OUT/card.md"
if [ -d "$WHL" ] && ls "$WHL"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl || exit 1
fi
filt() { grep --line-buffered -v "Loading weights\|should be kept in float32\|it/s\]$" || true; }
run() { "$@" 2>&1 | filt >> "$OUT/log.txt"; }
R="$PY -m ragturbo.cli"
card "start"

# 1. the student, the prompts, the retrieval split and the eval prompts (CPU) beside the teacher's targets (GPU)
run $PY -m lab.train.reproduce prepare "$W" --rows "$ROWS" || exit 1
( run $R toyworld retrieval-data --out "$W/retrieval" --n "$NRET" && run $R toyworld eval-prompts --out "$W/eval-prompts.txt" ) &
side=$!
run $R train teacher-samples --student "$W/student" --teacher-unet toyworld/assets/eval/teacher_unet \
  --prompts "$W/prompts.txt" --out "$W/teacher-samples" --steps 25 --cfg 3 --scheduler ddim --seed 1000000 \
  --batch-size 2048 --device "$DEVICE" || exit 1
wait $side || exit 1
card "student, $ROWS teacher targets, retrieval split, eval prompts"

# 2. the adapter run and its control, concurrently (the toy UNet leaves most of the GPU idle)
recipe="$W/recipe.yaml"
sed -e "s#\.\./\.\./runs/toy-adapter#$W#" -e "s#^device: .*##" training/recipes/toy-adapter.yaml > "$recipe"
echo "device: $DEVICE" >> "$recipe"
common=(--steps "$STEPS" --time-limit-s "$TRAIN_S" --no-resume)
( $R train adapter --config "$recipe" "${common[@]}" --output-dir "$W/adapter" 2>&1 | filt > "$W/adapter.log" ) &
pa=$!
( $R train adapter --config "$recipe" "${common[@]}" --control --output-dir "$W/control" 2>&1 | filt > "$W/control.log" ) &
pc=$!
wait $pa; ra=$?; wait $pc; rc=$?
cat "$W/adapter.log" "$W/control.log" | grep -v "train adapter (regression):" >> "$OUT/log.txt"
tar -cf "$OUT/train.tar" -C "$W" adapter/log.csv adapter/result.json control/log.csv control/result.json 2>/dev/null
card "trained: adapter rc=$ra $(tail -c 300 "$W/adapter/log.csv" | tail -1), control rc=$rc $(tail -c 300 "$W/control/log.csv" | tail -1)"
[ $ra -eq 0 ] && [ $rc -eq 0 ] || exit 1

# 3. export, and the decoder + adapter weights (what ships) back to $OUT
run $R train export --ckpt "$W/adapter" --out "$W/adapter_model" --overwrite || exit 1
run $R train export --ckpt "$W/control" --out "$W/control_model" --overwrite || exit 1
run $PY -c "import sys; from pathlib import Path; from engines.pipeline import OneStepPipeline; \
from toyworld.models.variants import save_variant; \
[save_variant(OneStepPipeline.from_pretrained(Path(sys.argv[1]) / f'{a}_model'), Path(sys.argv[2]) / f'{a}.safetensors') \
 for a in ('adapter', 'control')]" "$W" "$OUT" || exit 1
card "exported"

# 4. fidelity: this run's adapter and control, the shipped adapter (real) and control (control_plain), the student
run $PY -m lab.train.reproduce evalwork "$W" "$W/adapter_model" "$W/control_model" || exit 1
$R toyworld eval --work "$W/eval" --prompts "$W/eval-prompts.txt" --seeds "$SEEDS" --n-retrieval "$NRET" --device "$DEVICE" --json \
  --modes student,adapter,control,real,control_plain 2> >(filt >> "$OUT/log.txt") > "$OUT/eval.json" || exit 1
$PY -m lab.train.reproduce summary "$OUT/eval.json" > "$OUT/eval.md" || exit 1
card "eval done"
cat "$OUT/eval.md"
