"""Eighth run, after the GPU run: what now ships (its adapter, control and shuffled arm in
``toyworld/assets``) against what shipped before (the seventh run's adapter, named ``real`` here,
from a copy of the old ``toyworld/assets/model``), in one paired eval on the issue-13 prompts
and seeds. ``real - control`` compares the old adapter with the *new* control: read
``adapter - real`` (new against old) and the new arms' rows instead.
Usage: python docs/toyworld-issue13/run8/gpu_ship_cpu_eval.py OLD_MODEL PROMPTS [SEEDS] [MODES] > out.json"""

import json
import sys
from pathlib import Path

import torch

from engines.pipeline import OneStepPipeline
from toyworld.fideval import Suite, evaluate, format_table

old, prompts_file = Path(sys.argv[1]), sys.argv[2]
S = int(sys.argv[3]) if len(sys.argv) > 3 else 4
modes = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else (
    "student", "adapter", "control", "shuffled_test", "shuffled_trained", "real", "real_shuffled_test")
with open(prompts_file) as f:
    prompts = [p for p in f.read().splitlines() if p.strip()]
dev = torch.device("cpu")
suite = Suite.from_shipped(dev)
suite.pipes["real"] = OneStepPipeline.from_pretrained(old, device=dev)
suite.teacher = None
res = evaluate(prompts, suite, seeds_per_prompt=S, n_retrieval=10000, modes=modes, workers=2)
res["old_model"] = str(old)
print(json.dumps(res, indent=1))
print(format_table(res), file=sys.stderr)
