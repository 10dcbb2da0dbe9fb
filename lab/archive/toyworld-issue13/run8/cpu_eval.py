"""Eighth run, CPU: what ships (``toyworld/assets``: its model under the variant it ships as,
plus ``assets/eval``'s student, control and shuffled arm) with some variants replaced by other
model dirs, in one paired eval on the issue-13 prompts and seeds.

* the CPU trial: ``real=toyworld/assets/model adapter=WORK/adapter_model`` (the then-shipped
  adapter as ``real``, so ``real_shuffled_test`` is its shuffled test; the trial's adapter as
  ``adapter``);
* after the GPU run: ``real=OLD_MODEL`` (the seventh run's adapter, from a copy of the old
  ``toyworld/assets/model``; read ``adapter - real``, new against old: ``real - control``
  compares the old adapter with the *new* control).

Usage: python docs/toyworld-issue13/run8/cpu_eval.py PROMPTS SEEDS MODES NAME=MODEL_DIR... > out.json"""

import json
import sys
from pathlib import Path

import torch

from engines.pipeline import OneStepPipeline
from toyworld.fideval import Suite, evaluate, format_table

prompts_file, S, modes = sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3].split(","))
overrides = dict(a.split("=", 1) for a in sys.argv[4:])
with open(prompts_file) as f:
    prompts = [p for p in f.read().splitlines() if p.strip()]
dev = torch.device("cpu")
suite = Suite.from_shipped(dev)
for name, d in overrides.items():
    suite.pipes[name] = OneStepPipeline.from_pretrained(Path(d), device=dev)
suite.teacher = None
res = evaluate(prompts, suite, seeds_per_prompt=S, n_retrieval=10000, modes=modes, workers=2)
res["overrides"] = overrides
print(json.dumps(res, indent=1))
print(format_table(res), file=sys.stderr)
