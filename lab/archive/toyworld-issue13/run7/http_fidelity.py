"""Seventh run: the shipped model's fidelity as a client gets it, over HTTP from a running
``ragturbo serve`` (``make run``: the embedded Qdrant Edge database, search included). One
``POST /generate`` a prompt with ``num_images`` = SEEDS and ``seed`` = 1000·i, so image j has
seed 1000·i + j, the seeds of ``toyworld.fideval.evaluate``; retrieval mode adapter (top-1)
against mode off; paired bootstrap per prompt; the count of each ``retrieval_status``.
Usage: python docs/toyworld-issue13/run7/http_fidelity.py URL PROMPTS [SEEDS] > out.json"""

import base64
import io
import json
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from toyworld.fideval import GROUPS
from toyworld.models.data import rare_group
from toyworld.parse import parse
from toyworld.scoring import paired_bootstrap, per_prompt, score_images

url, prompts_file = sys.argv[1:3]
S = int(sys.argv[3]) if len(sys.argv) > 3 else 4
with open(prompts_file) as f:
    prompts = [p for p in f.read().splitlines() if p.strip()]
groups = np.array([rare_group(parse(p)) for p in prompts])


def post(i: int, mode: str) -> tuple[list[np.ndarray], str]:
    body = {"prompt": prompts[i], "num_images": S, "seed": 1000 * i, "retrieval": {"mode": mode, "k": 1}}
    req = urllib.request.Request(f"{url}/generate", json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        d = json.load(r)
    ims = [np.asarray(Image.open(io.BytesIO(base64.b64decode(im["b64"]))).convert("RGB")) for im in d["images"]]
    return ims, d["retrieval_status"]


out: dict = {"url": url, "n_prompts": len(prompts), "seeds_per_prompt": S}
pp = {}
for mode in ("adapter", "off"):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as ex:
        res = list(ex.map(lambda i, m=mode: post(i, m), range(len(prompts))))
    ims = np.stack([im for r in res for im in r[0]])
    pp[mode] = per_prompt([r["overall"] for r in score_images(ims, [p for p in prompts for _ in range(S)])], S)
    out[mode] = {"overall": float(pp[mode].mean()), **{g: float(pp[mode][groups == g].mean()) for g in GROUPS},
                 "retrieval_status": dict(Counter(r[1] for r in res)), "wall_s": round(time.perf_counter() - t0, 1)}
out["adapter-off"] = {"overall": paired_bootstrap(pp["adapter"], pp["off"], 2000),
                      **{g: paired_bootstrap(pp["adapter"][groups == g], pp["off"][groups == g], 2000) for g in GROUPS}}
print(json.dumps(out, indent=1))
