"""A quick read of a checkpoint: held-out concepts at N = 20 only, few prompts (one-off)."""
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)
from engines.default_model import SHIPPED
from engines.pipeline import OneStepPipeline
from toyworld.concept_eval import evaluate_concepts, format_concepts
from toyworld.fideval import apply_variant
from toyworld.models.concept_train import cached_database

run = Path(sys.argv[1])
tmp = Path(tempfile.mkdtemp())
for n in ("adapter", "control"):  # copy: the trainer may rewrite them meanwhile
    shutil.copyfile(run / f"{n}.safetensors", tmp / f"{n}.safetensors")
pipes = {}
for n in ("adapter", "control"):
    p = OneStepPipeline.from_pretrained(SHIPPED, device=torch.device("cpu")); apply_variant(p, tmp / f"{n}.safetensors"); pipes[n] = p
db = cached_database(pipes["adapter"], 10000, run / "db.pt")
r = evaluate_concepts(pipes, db, (20,), int(sys.argv[2]) if len(sys.argv) > 2 else 4, 2, 500)
print(format_concepts(r))
