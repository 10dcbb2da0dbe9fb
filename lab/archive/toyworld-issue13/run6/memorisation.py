"""Sixth run: do the arms fit their training rows or their captions? Scores the student and
each arm on the first N training rows' captions (items 0..N-1 of the adapter split, the rows
every run trains on), once with each row's own training noise (seed ADAPTER_NOISE_SEED + i,
as ``toyworld.fidelity.stage_arms`` draws it) and once with fresh noise (the eval's seeds).
Usage: python docs/toyworld-issue13/run6/memorisation.py WORK [N] [ARMS]   (ARMS: adapter,shuffled)"""

import json
import sys

import numpy as np
import torch
from toyworld.fidelity import restore_arms

from retrieval.compose import TextToImage
from toyworld.fideval import Database, Suite, compose_images
from toyworld.models.adapter import ADAPTER_NOISE_SEED
from toyworld.models.data import make_split
from toyworld.scoring import aggregate, paired_bootstrap, score_images

work, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 400
arms = sys.argv[3].split(",") if len(sys.argv) > 3 else ["adapter", "shuffled"]
restore_arms(work)  # a GPU run sends back variant files only
suite = Suite.from_workdir(work, torch.device("cpu"))
caps = make_split("adapter", n).captions
db = Database.build(suite.pipes["student"], 10000).as_retrieval_db()
out = {}
for noise, seeds in (("training", [ADAPTER_NOISE_SEED + i for i in range(n)]), ("fresh", [1000 * i for i in range(n)])):
    per = {}
    for name, mode in (("student", "off"), *((a, "adapter") for a in arms)):
        ims = compose_images(TextToImage(suite.pipes[name], db, retrieval_timeout_s=None), caps, seeds, mode)
        rows = score_images(ims, caps)
        per[name] = [r["overall"] for r in rows]
        out[f"{noise}/{name}"] = aggregate(rows)["overall"]
    for a in arms:
        out[f"{noise}/{a}-student"] = paired_bootstrap(np.array(per[a]), np.array(per["student"]), 2000)
print(json.dumps(out, indent=1))
