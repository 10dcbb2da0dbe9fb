"""Grid: concept prompts with an oracle neighbour (its clean render), the checkpoint vs shipped (one-off)."""
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(1)
from engines.default_model import SHIPPED
from engines.pipeline import OneStepPipeline
from toyworld import concepts as C
from toyworld.fideval import apply_variant

run = Path(sys.argv[1]); tmp = Path(tempfile.mkdtemp()); shutil.copyfile(run / "adapter.safetensors", tmp / "a.safetensors")
new = OneStepPipeline.from_pretrained(SHIPPED, device=torch.device("cpu")); apply_variant(new, tmp / "a.safetensors")
old = OneStepPipeline.from_pretrained(SHIPPED, device=torch.device("cpu"))
shapes = ["ring", "star", "heart", "bar", "arrow", "moon", "bowtie", "cross"]
ps = [f"a red {s}" for s in shapes]
ref = np.stack([C.render_items([C.Item(s, "red", 24 + 3 * i, 36 - 2 * i, 22)], "black") for i, s in enumerate(shapes)])
rows = [ref]
with torch.inference_mode():
    for p in (old, new):
        te = p.encode_text(ps)
        h = p.retrieval_features(p.encode_images(ref), te.context).float()[:, None]
        rows.append(p.generate(te, list(range(8)), "adapter", h, torch.ones(8, 1)).images)
        rows.append(p.generate(te, list(range(8)), "off").images)
Image.fromarray(np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)).resize((512 * 3, 320 * 3), Image.NEAREST).save(sys.argv[2])
