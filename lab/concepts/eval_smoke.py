"""Smoke the concept eval on the shipped variants (tiny sizes; one-off)."""
import logging

import torch

torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)
from toyworld.concept_eval import evaluate_concepts, format_concepts
from toyworld.fideval import Suite

s = Suite.from_shipped(torch.device("cpu"))
res = evaluate_concepts({k: s.pipes[k] for k in ("adapter", "control")}, None, (5,), 3, 2, 200)
print(format_concepts(res))
