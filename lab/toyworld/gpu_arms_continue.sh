#!/usr/bin/env bash
# Issue 13, seventh to ninth runs: continue an earlier run's arms on fresh rows, safe across device calls.
# `start` launches lab.toyworld.fidelity under setsid (it outlives the call while the machine stays
# warm) and polls; `poll` (the next call, within the machine's warm window) only polls. Every
# 10 s the arms' latest checkpoint (WORK/variants: <arm>.safetensors + progress.json, written
# every 60 s; progress.json goes into $OUT/card.md), the filtered log and, once packed,
# results.tar are copied to $OUT, so a call cut short or a machine lost mid-call keeps what the
# last copy held.
# Usage: bash lab/toyworld/gpu_arms_continue.sh start|poll [SECONDS (400)]
# Env: RUN (a dir with student_unet/ and init/<arm>.safetensors: the earlier run's student and
# variants; RUN=shipped: what ships, the student from toyworld/assets (model + eval/student) and
# the arms from `python -m lab.toyworld.ship --variants`), EXTRA (more --set keys, e.g.
# query_gate=1,shuffle_frac=0.25: the eighth run), N (rows, 200000), START (first row of the adapter split, 0), ARMS_S (arm stage cap,
# 750), ARMS (adapter,control,shuffled), STAGES (the arms' stages, arms,eval,probe; `arms` alone
# retrains one arm without an eval that needs the others), TEACHER (toyworld/assets/eval/teacher_unet), WHL (a dir
# of wheels to install under /tmp/site first; unset: none), OUT, WORK (/tmp/wF), PY (python3).
W=${WORK:-/tmp/wF}; P=$W.pack; RUN=${RUN:-out/run7}; PY=${PY:-python3}; OUT=${OUT:-out/continue}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
copyout() {
  # card, init and progress in one file: a call returns 8 files at most (5 arms + log, tar, card)
  cat "$W.card.md" "$W.init.json" "$W/variants/progress.json" > "$OUT/card.md" 2>/dev/null
  grep -v " step [0-9]* loss\|Loading weights\|should be kept in float32" "$W.log" > "$OUT/log.txt" 2>/dev/null
  cp "$W"/variants/*.safetensors "$OUT/" 2>/dev/null
  [ -f "$P/results.tar" ] && cp "$P/results.tar" "$OUT/"
}
running() { pgrep -f "lab.toyworld.fidelity $W " >/dev/null; }
if [ "$1" = start ]; then
  if [ -n "${WHL:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl || exit 1
  fi
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null; date -u +%FT%TZ; } > "$W.card.md"
  # copies outside the tree: a later call's copy of the working tree may replace it
  rm -rf "$W.run" "$W.teacher" && cp -r "${TEACHER:-toyworld/assets/eval/teacher_unet}" "$W.teacher"
  if [ "$RUN" = shipped ]; then
    $PY -m lab.toyworld.ship --variants "$W.run/init" "${ARMS:-adapter,control,shuffled}" > "$W.init.json" || exit 1
    student=()
  else
    cp -r "$RUN" "$W.run" && student=(--seed-student "$W.run/student_unet")
  fi
  setsid nohup $PY -m lab.toyworld.fidelity "$W" --family full-mid \
    --seed-shipped "$W.teacher" "${student[@]}" --arm-init "$W.run/init" \
    --arms "${ARMS:-adapter,control,shuffled}" --stages base,teacher,skewed,student,export,${STAGES:-arms,eval,probe} \
    --set "swap_frac=0,n_adapter=${N:-200000},adapter_start=${START:-0},checkpoint_s=60${EXTRA:+,$EXTRA}" \
    --limits "arms=${ARMS_S:-750}" --pack "$P" > "$W.log" 2>&1 < /dev/null &
  sleep 2
fi
end=$((SECONDS + ${2:-400}))
while [ $SECONDS -lt $end ]; do
  sleep "${POLL_S:-10}"; copyout
  running || break
done
{ nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; date -u +%FT%TZ; } >> "$W.card.md"
copyout
running && echo RUNNING || echo FINISHED
tail -4 "$OUT/log.txt"; cat "$W/variants/progress.json" 2>/dev/null; echo
