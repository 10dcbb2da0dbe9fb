"""Does the teacher / the shipped student draw the named background? (one-off, CPU)."""
import json

import numpy as np
import torch

torch.set_num_threads(1)
from pathlib import Path

from toyworld.detect import analyse
from toyworld.fideval import Suite, _teacher_latents
from toyworld.models.data import make_split
from toyworld.parse import parse

suite = Suite.from_shipped(torch.device("cpu"))
sp = make_split("eval", 400, images=False)
ps = [c for c, s in zip(sp.captions, sp.specs) if s.background is not None][:120]
bgs = [parse(p).background for p in ps]
seeds = list(range(len(ps)))
pipe = suite.pipes["adapter"]
out = {}
lat = _teacher_latents(suite, pipe, ps, seeds, 25, 3.0)
out["teacher"] = pipe.decode_latents(lat)
out["off"] = pipe(ps, seeds, "off").images
res = {m: float(np.mean([analyse(im).background == b for im, b in zip(ims, bgs)])) for m, ims in out.items()}
res["n"] = len(ps)
print(json.dumps(res))
Path("lab/concepts/bg_baseline.json").write_text(json.dumps(res))
