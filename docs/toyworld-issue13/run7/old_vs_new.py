"""Seventh run: the shipped adapter model before and after it (each with its own encoder, so
each with its own retrieval database), on the same held-out prompts and seeds, top-1
retrieval through ``retrieval.compose`` as the service runs it; paired bootstrap per prompt.
Usage: python docs/toyworld-issue13/run7/old_vs_new.py OLD_MODEL_DIR NEW_MODEL_DIR PROMPTS [SEEDS] > out.json"""

import json
import sys
import time

import numpy as np

from engines.pipeline import OneStepPipeline
from retrieval.compose import TextToImage
from toyworld.fideval import GROUPS, Database, compose_images
from toyworld.models.data import rare_group
from toyworld.parse import parse
from toyworld.scoring import paired_bootstrap, per_prompt, score_images

old, new, prompts_file = sys.argv[1:4]
S = int(sys.argv[4]) if len(sys.argv) > 4 else 4
with open(prompts_file) as f:
    prompts = [p for p in f.read().splitlines() if p.strip()]
flat_p = [p for p in prompts for _ in range(S)]
flat_s = [1000 * i + j for i in range(len(prompts)) for j in range(S)]  # toyworld.fideval.evaluate's seeds
groups = np.array([rare_group(parse(p)) for p in prompts])
pp, out = {}, {"n_prompts": len(prompts), "seeds_per_prompt": S, "models": {"old": old, "new": new}}
for name, d in (("old", old), ("new", new)):
    t0 = time.perf_counter()
    pipe = OneStepPipeline.from_pretrained(d)
    t2i = TextToImage(pipe, Database.build(pipe, 10000).as_retrieval_db(), retrieval_timeout_s=None)
    ims = np.concatenate([compose_images(t2i, flat_p[i : i + 512], flat_s[i : i + 512], "adapter", 1)
                          for i in range(0, len(flat_p), 512)])
    pp[name] = per_prompt([r["overall"] for r in score_images(ims, flat_p)], S)
    out[name] = {"overall": float(pp[name].mean()), **{g: float(pp[name][groups == g].mean()) for g in GROUPS},
                 "wall_s": round(time.perf_counter() - t0, 1)}
out["new-old"] = {"overall": paired_bootstrap(pp["new"], pp["old"], 2000),
                  **{g: paired_bootstrap(pp["new"][groups == g], pp["old"][groups == g], 2000) for g in GROUPS}}
print(json.dumps(out, indent=1))
