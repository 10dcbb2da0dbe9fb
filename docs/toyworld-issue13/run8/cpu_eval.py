"""Eighth run, CPU arm: the shipped (seventh-run) models against a new adapter, in one eval.
The shipped adapter is renamed ``real`` (so ``real_shuffled_test`` is its shuffled test); the
new adapter dir (``<work>/adapter_model``) is ``adapter``; control, shuffled arm and student are
the shipped ones (``toyworld/assets/eval``). Same prompts and seeds as the issue-13 evals.
Usage: python docs/toyworld-issue13/run8/cpu_eval.py WORK PROMPTS [SEEDS] [MODES] > out.json"""

import json
import sys
from pathlib import Path

import torch

from engines.pipeline import OneStepPipeline
from toyworld.fideval import Suite, evaluate, format_table

work, prompts_file = Path(sys.argv[1]), sys.argv[2]
S = int(sys.argv[3]) if len(sys.argv) > 3 else 4
modes = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else (
    "student", "adapter", "control", "real", "shuffled_test", "real_shuffled_test")
with open(prompts_file) as f:
    prompts = [p for p in f.read().splitlines() if p.strip()]
dev = torch.device("cpu")
suite = Suite.from_shipped(dev)
suite.pipes["real"] = suite.pipes.pop("adapter")
suite.pipes["adapter"] = OneStepPipeline.from_pretrained(work / "adapter_model", device=dev)
suite.teacher = None
res = evaluate(prompts, suite, seeds_per_prompt=S, n_retrieval=10000, modes=modes, workers=2)
res["adapter_dir"] = str(work / "adapter_model")
print(json.dumps(res, indent=1))
print(format_table(res), file=sys.stderr)
