#!/usr/bin/env bash
# Device call: install the carried wheels, run lab/concepts/gpu_run.py in the background and
# copy its checkpoints to $OUT every 15 s, so a call cut short keeps the last ones.
# usage: bash lab/concepts/gpu_run.sh SECONDS [gpu_run.py args after OUT WORK]
# Carry .whl with diffusers 0.42.1, importlib_metadata, pydantic 2.14.4, pydantic_core,
# annotated-types, typing-inspection (8.8 MB): with the tracked tree at 59 MB that is over the
# device tool's 64 MiB, so move toyworld/assets/retrieval/h-*.npz (17 MB; the run builds its own
# database) out of the working tree for the call and back after it.
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
