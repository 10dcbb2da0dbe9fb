"""Seventh run: the shipped model through every CPU backend (torch, torch-opt, onnxruntime,
fast), each with the embedded Qdrant Edge database that ``make run`` builds, retrieval on
(mode adapter, top-1): the retrieval status of every request, the images' largest difference
from the torch backend's, and fidelity against mode off on the same backend.
Usage: python docs/toyworld-issue13/run7/backends_fidelity.py DB_PATH ONNX_DIR PROMPTS [N] > out.json
(ONNX_DIR: ``ragturbo export onnx --model-dir toyworld/assets/model --out ONNX_DIR``)"""

import json
import sys
from collections import Counter

import numpy as np

from engines.default_model import SHIPPED
from retrieval.compose import ImageRequest, build_text_to_image
from toyworld.scoring import paired_bootstrap, score_images

db, onnx, prompts_file = sys.argv[1:4]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 100
with open(prompts_file) as f:
    prompts = [p for p in f.read().splitlines() if p.strip()][:n]
out: dict = {"n_prompts": len(prompts), "model": str(SHIPPED), "db": db, "backends": {}}
ref = None
for name in ("torch", "torch-opt", "onnxruntime", "fast"):
    t2i = build_text_to_image(SHIPPED, backend=name, db_path=db, **({"onnx_dir": onnx} if name == "onnxruntime" else {}))
    try:
        ims, score = {}, {}
        for mode in ("adapter", "off"):
            res, _ = t2i.generate([ImageRequest(p, seed=1000 * i, mode=mode) for i, p in enumerate(prompts)])
            ims[mode] = np.stack([r.image for r in res])
            score[mode] = np.array([r["overall"] for r in score_images(ims[mode], prompts)])
            if mode == "adapter":
                status = dict(Counter(r.retrieval_status for r in res))
        ref = ims["adapter"] if ref is None else ref
        out["backends"][name] = {
            "retrieval_status": status, "adapter": float(score["adapter"].mean()), "off": float(score["off"].mean()),
            "adapter-off": paired_bootstrap(score["adapter"], score["off"], 2000),
            "max_abs_diff_vs_torch": int(np.abs(ims["adapter"].astype(int) - ref.astype(int)).max())}
    finally:
        t2i.close()
print(json.dumps(out, indent=1))
