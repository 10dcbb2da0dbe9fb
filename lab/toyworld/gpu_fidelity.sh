#!/usr/bin/env bash
# Issue 13's whole GPU run (about 15 minutes on one H200; longer than one 10-minute device
# call, so start it with setsid and poll): teacher (natural split) -> skewed teacher (the
# student's initialisation) -> student -> arms (adapter with the leak curriculum, real,
# control, shuffled, leak) -> eval -> probe (lab.toyworld.fidelity), each stage time-capped and
# packed to $OUT as it finishes (6 files: log.txt, results.tar, teacher.tar, model.tar,
# variants_0.tar, variants_1.tar; a device call sends back at most 8 files of 16 MiB).
# Env: OUT (default out/gpu13), WORK (/tmp/fid13), BUDGET (s, 960), LIMITS, EXTRA (more
# lab.toyworld.fidelity arguments), PROBE_MODEL (also probe that model dir first; off by default).
set -o pipefail
OUT=${OUT:-out/gpu13}
WORK=${WORK:-/tmp/fid13}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tee "$WORK/card.md"
date -u +%FT%TZ >> "$WORK/card.md"
if [ -n "${PROBE_MODEL:-}" ]; then
  ( timeout 200 ${PY:-python3} -m lab.toyworld.probe "$PROBE_MODEL" --n "${PROBE_N:-400}" \
      --json "$WORK/probe_before.json" > "$WORK/probe_before.md" 2> "$WORK/probe_before.err" ) &
fi
timeout "${BUDGET:-960}" ${PY:-python3} -m lab.toyworld.fidelity "$WORK" --family full-mid \
  --limits "${LIMITS:-teacher=140,skewed=100,student=60,arms=300}" --pack "$OUT" $EXTRA 2>&1 \
  | { grep --line-buffered -v " step [0-9]*[1-9]00 loss\| step [0-9]*[1-9]50 loss\|Loading weights\|should be kept in float32" || true; } \
  | tee "$OUT/log.txt"
rc=$?
wait
date -u +%FT%TZ >> "$WORK/card.md"
# final repack so every JSON (and the card) lands in results.tar
tar -cf "$OUT/results.tar" -C "$WORK" $(cd "$WORK" && ls *.json *.md */done.json 2>/dev/null)
exit $rc
