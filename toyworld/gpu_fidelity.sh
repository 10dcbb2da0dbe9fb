#!/usr/bin/env bash
# Issue 13's whole GPU run in one call (about 7 minutes on one H200): the probe of the
# model shipped before the run (PROBE_MODEL; on 2026-12-02 the first, cross-attention-
# everywhere family: probe_xattn.*), then teacher -> student -> arms -> eval ->
# probe of the mid-block family (toyworld.fidelity), each stage time-capped and packed to
# $OUT as it finishes (8 files: log.txt, results.tar, teacher/model/<arm>_model tars).
# Env: OUT (default out/gpu13), WORK (/tmp/fid13), BUDGET (s, 540), PROBE_N (400),
# LIMITS, EXTRA (more toyworld.fidelity arguments).
set -o pipefail
OUT=${OUT:-out/gpu13}
WORK=${WORK:-/tmp/fid13}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tee "$WORK/card.md"
date -u +%FT%TZ >> "$WORK/card.md"
( timeout 200 ${PY:-python3} -m toyworld.probe "${PROBE_MODEL:-toyworld/assets/model}" --n "${PROBE_N:-400}" \
    --json "$WORK/probe_before.json" > "$WORK/probe_before.md" 2> "$WORK/probe_before.err" ) &
timeout "${BUDGET:-540}" ${PY:-python3} -m toyworld.fidelity "$WORK" --family full-mid \
  --limits "${LIMITS:-teacher=150,student=55,arms=105}" --pack "$OUT" $EXTRA 2>&1 \
  | grep --line-buffered -v " step [0-9]*[1-9]00 loss\| step [0-9]*[1-9]50 loss" | tee "$OUT/log.txt"
rc=$?
wait
# final repack so the first probe lands in results.tar even if it finished last
tar -cf "$OUT/results.tar" -C "$WORK" $(cd "$WORK" && ls *.json *.md */done.json 2>/dev/null)
exit $rc
