#!/usr/bin/env bash
# Issue 13: one student, several arm recipes side by side on one GPU.
# Trains the shared stages once in $WORK (base + teacher seeded from $TEACHER, a natural-split
# teacher UNet dir; then the skewed teacher, the student, export), then forks $WORK into one
# work dir per recipe and runs their arms, eval and probe as concurrent processes (the toy
# UNet leaves much of an H100 idle: on 2026-12-05 three processes of six arms each ran at 71 % of
# the speed of one such process alone on another start of the card, 2.1x the arm steps a second in all).
# Env: OUT (default out/sweep), WORK (/tmp/sweep), TEACHER (toyworld/assets/eval/teacher_unet),
# LIMITS (skewed=100,student=60), ARMS_S (arm stage cap, 420), RECIPES (space-separated
# NAME:--set-overrides), SET (overrides for every stage, e.g. n_train=512), EXTRA (more
# lab.toyworld.fidelity arguments for every process), ARMS (the arms of every recipe, default all
# six), FAMILY (full-mid), PY. Outputs: $WORK/<NAME>/ (eval.json, probe.json, variants/) and,
# per recipe, $OUT/<NAME>/results.tar + variants_*.tar; $OUT/model.tar (the student).
set -o pipefail
OUT=${OUT:-out/sweep}
WORK=${WORK:-/tmp/sweep}
TEACHER=${TEACHER:-toyworld/assets/eval/teacher_unet}
RECIPES=${RECIPES:-"k1s50:swap_frac=0.5,swap_detach=1 k4s50:swap_frac=0.5,swap_detach=1,train_k=4 k1s75:swap_frac=0.75,swap_detach=1"}
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK/shared"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null; date -u +%FT%TZ; } > "$OUT/card.md"
filt() { grep --line-buffered -v " step [0-9]*[1-9]00 loss\| step [0-9]*[1-9]50 loss\|Loading weights\|should be kept in float32" || true; }
FAMILY=${FAMILY:-full-mid}
$PY -m lab.toyworld.fidelity "$WORK/shared" --family "$FAMILY" --seed-teacher "$TEACHER" ${SET:+--set "$SET"} $EXTRA \
  --stages base,teacher,skewed,student,export --limits "${LIMITS:-skewed=100,student=60}" --pack "$OUT" 2>&1 \
  | filt | tee "$OUT/log_shared.txt" || exit 1
pids=()
for r in $RECIPES; do
  name=${r%%:*}; set=${r#*:}
  rm -rf "$WORK/$name"; cp -r "$WORK/shared" "$WORK/$name"; mkdir -p "$OUT/$name"
  ( $PY -m lab.toyworld.fidelity "$WORK/$name" --family "$FAMILY" --set "${SET:+$SET,}$set" $EXTRA --stages arms,eval,probe \
      ${ARMS:+--arms "$ARMS"} --limits "arms=${ARMS_S:-420}" --pack "$OUT/$name" 2>&1 | filt > "$OUT/$name/log.txt" ) &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
date -u +%FT%TZ >> "$OUT/card.md"
exit $rc
