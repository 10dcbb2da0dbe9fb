#!/usr/bin/env bash
# Device call: install the carried wheels, run lab/concepts/gpu_run.py in the background and
# copy its checkpoints to $OUT every 15 s, so a call cut short keeps the last ones.
# usage: bash lab/concepts/gpu_run.sh SECONDS [gpu_run.py args after OUT WORK]
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
W=/tmp/cw; mkdir -p "$W" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/card.txt"; date -u +%FT%TZ >> "$OUT/card.txt"
lim=$1; shift
python3 lab/concepts/gpu_run.py "$OUT" "$W" "$@" > "$W.log" 2>&1 &
pid=$!
end=$((SECONDS + lim))
while kill -0 $pid 2>/dev/null && [ $SECONDS -lt $end ]; do
  sleep 15; cp "$W"/adapter.safetensors "$W"/control.safetensors "$OUT/" 2>/dev/null
done
cp "$W"/adapter.safetensors "$W"/control.safetensors "$OUT/" 2>/dev/null
kill -0 $pid 2>/dev/null && echo STILL-RUNNING
grep -v "Loading\|float32\|step [0-9]* " "$W.log" | tail -60
