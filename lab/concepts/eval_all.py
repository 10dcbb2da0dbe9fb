"""Ordinary 400-prompt table and held-out-concept table for a concept run vs the shipped model.

usage: python lab/concepts/eval_all.py RUN_DIR OUT_PREFIX [ordinary|concepts|both]
RUN_DIR holds adapter.safetensors / control.safetensors (toyworld.models.concept_train) and db.pt.
"""
import json
import logging
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
from engines.default_model import SHIPPED
from engines.pipeline import OneStepPipeline
from toyworld import fideval
from toyworld.concept_eval import evaluate_concepts, format_concepts
from toyworld.fideval import SHIPPED_EVAL, Suite, apply_variant
from toyworld.models.concept_train import cached_database

run, prefix = Path(sys.argv[1]), sys.argv[2]
what = sys.argv[3] if len(sys.argv) > 3 else "both"
dev = torch.device("cpu")

def pipe_with(variant):
    p = OneStepPipeline.from_pretrained(SHIPPED, device=dev)
    if variant is not None:
        apply_variant(p, variant)
    return p

new_a, new_c = (pipe_with(run / "adapter.safetensors"), pipe_with(run / "control.safetensors")) if what != "concepts_shipped" else (None, None)
old_a, old_c = pipe_with(None), pipe_with(SHIPPED_EVAL / "control.safetensors")
db = cached_database(old_a, 10000, run / "db.pt")
fideval.Database.build = staticmethod(lambda pipe, n, batch=512: db)  # the cached retrieval split
t0 = time.time()
if what in ("ordinary", "both"):
    from toyworld.models.data import eval_prompts
    lines, _ = eval_prompts(200, 200)  # what `make toyworld-eval` writes
    for tag, pa, pc in (("", new_a, new_c), ("_shipped", old_a, old_c)):  # the run, then what ships
        suite = Suite({"student": pa, "adapter": pa, "control": pc}, None, f"{run}{tag}")
        res = fideval.evaluate(lines, suite, 4, 10000, modes=("adapter", "control"))
        Path(f"{prefix}_ordinary{tag}.json").write_text(json.dumps(res, indent=1))
        Path(f"{prefix}_ordinary{tag}.md").write_text(fideval.format_table(res))
        print(fideval.format_table(res)); print("ordinary", tag, time.time() - t0)
if what in ("concepts", "both", "concepts_new", "concepts_shipped"):
    arms = (("new", new_a, new_c), ("shipped", old_a, old_c))
    for tag, pa, pc in [a for a in arms if what in ("concepts", "both") or what.endswith(a[0])]:
        r = evaluate_concepts({"adapter": pa, "control": pc}, db, (0, 5, 20, 100), 10, 4)
        Path(f"{prefix}_concepts_{tag}.json").write_text(json.dumps(r, indent=1))
        Path(f"{prefix}_concepts_{tag}.md").write_text(format_concepts(r))
        print(tag); print(format_concepts(r)); print("concepts", time.time() - t0)
