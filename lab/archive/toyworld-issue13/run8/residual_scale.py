"""Eighth run, a test-time probe on the shipped model: scale the adapter's residual,
h + s * (adapter(h, h_r, λ) - h), as classifier-free guidance scales a difference, and see
whether a stronger pull toward the neighbour raises fidelity where only the database knows the
answer (held-out-rare). The scaled model is mode ``real``; ``adapter`` (s = 1) and ``control``
are the shipped ones; same prompts and seeds as the issue-13 evals. Nothing ships from it.
Usage: python docs/toyworld-issue13/run8/residual_scale.py PROMPTS S [SEEDS] > out.json"""

import copy
import json
import sys

import torch

from toyworld.fideval import Suite, evaluate, format_table


class Scaled(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, s: float) -> None:
        super().__init__()
        self.inner, self.s = inner, s
        self.config = inner.config

    def forward(self, h: torch.Tensor, h_r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return h + self.s * (self.inner(h, h_r, lam) - h)


if __name__ == "__main__":  # importable for its Scaled (run9/residual_scale_val.py)
    prompts_file, s = sys.argv[1], float(sys.argv[2])
    S = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    with open(prompts_file) as f:
        prompts = [p for p in f.read().splitlines() if p.strip()]
    dev = torch.device("cpu")
    suite = Suite.from_shipped(dev)
    scaled = copy.copy(suite.pipes["adapter"])
    scaled.hadapter = Scaled(suite.pipes["adapter"].hadapter, s)
    suite.pipes["real"] = scaled
    suite.teacher = None
    res = evaluate(prompts, suite, seeds_per_prompt=S, n_retrieval=10000, modes=("adapter", "control", "real"), workers=2)
    res["residual_scale"] = s
    print(json.dumps(res, indent=1))
    print(format_table(res), file=sys.stderr)
