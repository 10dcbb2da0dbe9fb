"""Ninth run, CPU: what λ the service's rule (``engines.rules.neighbour_lambda``: the cosine
between the prompt's and the neighbour's caption embeddings) gives a *wrong* neighbour. The
eval's shuffled test hands the adapter the next prompt's top-1 neighbour with the right
neighbour's λ; here the same wrong neighbour is scored by its own caption, as the service
would score it. Shipped model, the issue-13 prompts, the 10 000-pair retrieval split.
Usage: python docs/toyworld-issue13/run9/lambda_wrong.py PROMPTS > out.json"""

import json
import sys

import numpy as np
import torch

from engines.default_model import SHIPPED
from engines.pipeline import OneStepPipeline
from toyworld.fideval import Database
from toyworld.models.data import make_split

pipe = OneStepPipeline.from_pretrained(SHIPPED)
with open(sys.argv[1]) as f:
    prompts = [p for p in f.read().splitlines() if p.strip()]
captions = make_split("retrieval", 10000, images=False).captions


def embed(caps: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.nn.functional.normalize(pipe.encode_text(caps[i : i + 512]).pooled.float(), dim=-1)
                          for i in range(0, len(caps), 512)])


q = embed(prompts)
db = Database(captions, np.empty(0), embed(captions), torch.empty(0))  # captions only: λ needs no images
right, idx = db.search(q, 1)
wrong = db.score(q, idx.roll(1, 0))  # the shuffled test's neighbour, its own λ (shuffled_own_lam)


def stats(x: torch.Tensor) -> dict[str, float]:
    return {"mean": round(float(x.mean()), 4), "median": round(float(x.median()), 4), "max": round(float(x.max()), 4),
            "share_ge_0.5": round(float((x >= 0.5).float().mean()), 4)}


print(json.dumps({"n_prompts": len(prompts), "lambda_right_top1": stats(right), "lambda_wrong_own_caption": stats(wrong)}, indent=1))
