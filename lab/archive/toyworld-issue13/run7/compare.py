"""Seventh run: two (model, mode) pairs on the same held-out prompts and seeds, each model with
its own retrieval database (its own encoder), top-1 through ``retrieval.compose`` as the
service runs it; paired bootstrap per prompt. Used for the shipped model against the one it
replaced (``OLD:adapter NEW:adapter``) and for what retrieval is worth to a user of the shipped
model (``NEW:adapter NEW:off``: mode "off", also the service's path when the database is down).
Usage: python docs/toyworld-issue13/run7/compare.py MODEL_A:MODE_A MODEL_B:MODE_B PROMPTS [SEEDS] > out.json"""

import json
import sys

import numpy as np

from engines.pipeline import OneStepPipeline
from retrieval.compose import TextToImage
from toyworld.fideval import GROUPS, Database, compose_images
from toyworld.models.data import rare_group
from toyworld.parse import parse
from toyworld.scoring import paired_bootstrap, per_prompt, score_images

sides = [tuple(x.rsplit(":", 1)) for x in sys.argv[1:3]]
S = int(sys.argv[4]) if len(sys.argv) > 4 else 4
with open(sys.argv[3]) as f:
    prompts = [p for p in f.read().splitlines() if p.strip()]
flat_p = [p for p in prompts for _ in range(S)]
flat_s = [1000 * i + j for i in range(len(prompts)) for j in range(S)]  # toyworld.fideval.evaluate's seeds
groups = np.array([rare_group(parse(p)) for p in prompts])
pp, t2i = [], {}
out: dict = {"n_prompts": len(prompts), "seeds_per_prompt": S, "sides": []}
for model, mode in sides:
    if model not in t2i:
        pipe = OneStepPipeline.from_pretrained(model)
        t2i[model] = TextToImage(pipe, Database.build(pipe, 10000).as_retrieval_db(), retrieval_timeout_s=None)
    ims = np.concatenate([compose_images(t2i[model], flat_p[i : i + 512], flat_s[i : i + 512], mode, 1)
                          for i in range(0, len(flat_p), 512)])
    pp.append(per_prompt([r["overall"] for r in score_images(ims, flat_p)], S))
    out["sides"].append({"model": model, "mode": mode, "overall": float(pp[-1].mean()),
                         **{g: float(pp[-1][groups == g].mean()) for g in GROUPS}})
out["a-b"] = {"overall": paired_bootstrap(pp[0], pp[1], 2000),
              **{g: paired_bootstrap(pp[0][groups == g], pp[1][groups == g], 2000) for g in GROUPS}}
print(json.dumps(out, indent=1))
