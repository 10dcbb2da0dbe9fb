"""Ninth run, CPU: choose the adapter's residual scale s (h + s * (adapter(h, h_r, λ) - h)) on a
*validation* split of prompts the issue-13 tables never use: the eval split's common prompts
200..399 and long-tail prompts 200..399 (the tables use 0..199 of each). The eighth run picked
s = 1.5 on the eval prompts themselves, which is not a result; this picks it where it can be.

Writes the validation prompts to PROMPTS_OUT, then one paired eval (mode ``adapter`` at s = 1,
``control``, and each s as its own mode) of what ships, or of MODEL_DIR as ``adapter`` and
CONTROL_DIR as ``control`` when given.
Usage: python docs/toyworld-issue13/run9/residual_scale_val.py PROMPTS_OUT SEEDS S1,S2,.. [MODEL_DIR [CONTROL_DIR]] > out.json"""

import copy
import json
import sys
from pathlib import Path

import torch

from engines.pipeline import OneStepPipeline
from toyworld.fideval import Suite, evaluate
from toyworld.models.data import eval_prompts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "run8"))  # the eighth run's probe
from residual_scale import Scaled  # h + s * (adapter - h)

out, S, scales = sys.argv[1], int(sys.argv[2]), [float(x) for x in sys.argv[3].split(",")]
p, tail = eval_prompts(400, 400)
prompts = [q for q, t in zip(p, tail, strict=True) if not t][200:] + [q for q, t in zip(p, tail, strict=True) if t][200:]
Path(out).write_text("\n".join(prompts) + "\n")
dev = torch.device("cpu")
suite = Suite.from_shipped(dev)
if len(sys.argv) > 4:
    suite.pipes["adapter"] = OneStepPipeline.from_pretrained(Path(sys.argv[4]), device=dev)
if len(sys.argv) > 5:
    suite.pipes["control"] = OneStepPipeline.from_pretrained(Path(sys.argv[5]), device=dev)
suite.teacher = None
res = evaluate(prompts, suite, seeds_per_prompt=S, n_retrieval=10000, modes=("adapter", "control"), workers=2)
rows = {"s=1": res["modes"]["adapter"], "control": res["modes"]["control"]}
for s in scales:
    scaled = copy.copy(suite.pipes["adapter"])
    scaled.hadapter = Scaled(suite.pipes["adapter"].hadapter, s)
    suite.pipes["real"] = scaled
    rows[f"s={s:g}"] = evaluate(prompts, suite, seeds_per_prompt=S, n_retrieval=10000, modes=("real",), workers=2)["modes"]["real"]
summary = {k: {"overall": round(100 * v["overall"], 2), "held_out_rare": round(100 * v["held_out_rare"]["overall"], 2)}
           for k, v in rows.items()}
print(json.dumps({"prompts": "eval split: common 200..399 + long-tail 200..399", "n": len(prompts), "seeds": S,
                  "args": sys.argv[4:], "summary": summary, "modes": rows}, indent=1))
print(json.dumps(summary, indent=1), file=sys.stderr)
