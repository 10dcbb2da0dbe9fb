"""Time the concept rows' build and one training step on this CPU (one-off)."""
import time

import numpy as np
import torch

torch.set_num_threads(1)
from engines.default_model import SHIPPED
from engines.pipeline import OneStepPipeline
from lab.toyworld.arms import train_arms
from toyworld.fideval import Database
from toyworld.models.concept_rows import arm_data, build_rows, neighbour_pool

dev = torch.device("cpu")
pipe = OneStepPipeline.from_pretrained(SHIPPED, device=dev)
t = time.time(); db = Database.build(pipe, 1000); print("db 1000", time.time() - t)
t = time.time(); pool = neighbour_pool(2); print("pool", len(pool[1]), time.time() - t)
t = time.time(); rows, counts = build_rows(pipe, 256, 0, 0.3, 0.2, pool); print("rows 256", counts, time.time() - t)
print(rows.captions[:8], rows.kinds[:8])
from PIL import Image

Image.fromarray(np.concatenate(list(rows.images[:16]), 1)).save("lab/concepts/rows.png")
im = pipe.generate(pipe.encode_text(rows.captions[:16]), rows.seeds[:16], "off").images
Image.fromarray(np.concatenate(list(im), 1)).save("lab/concepts/rows_student.png")
t = time.time(); d = arm_data(pipe, rows, pool, db); print("armdata", time.time() - t)
for bs in (32, 64):
    t = time.time(); train_arms(pipe, d, ("adapter", "control"), 6, bs, 3e-4, 3e-5, dev, None, 0, 10**9); print("6 steps bs", bs, time.time() - t)
