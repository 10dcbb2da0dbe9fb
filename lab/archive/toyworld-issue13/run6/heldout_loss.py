"""Sixth run: is an arm's lower training loss a fit of its rows, or does it hold on rows it
never saw? The training loss (smooth-L1, beta 0.1, between the one-step x0 and the
natural teacher's DDIM sample from the same noise, as ``toyworld.models.arms.train_arms``)
of the student and each arm, on N rows it trained on (adapter split items 0..N-1) and on N
rows of the same split it never saw (items OFFSET..OFFSET+N-1), each with the noise the
arm stage draws for that item (seed ADAPTER_NOISE_SEED + i).
Usage: python docs/toyworld-issue13/run6/heldout_loss.py WORK OFFSET [N] [ARMS]"""

import json
import sys

import torch
import torch.nn.functional as F
from toyworld.fidelity import restore_arms

from engines.pipeline import OneStepPipeline
from engines.rules import x0_from_output
from toyworld.fideval import Database
from toyworld.models.adapter import ADAPTER_NOISE_SEED
from toyworld.models.data import make_split
from toyworld.models.teacher import sample

work, offset = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 400
arms = sys.argv[4].split(",") if len(sys.argv) > 4 else ["adapter", "shuffled"]
with open(f"{work}/family.json") as f:
    fam = json.load(f)
restore_arms(work)
torch.manual_seed(0)
base = OneStepPipeline.from_pretrained(f"{work}/model")
pipes = {"student": base, **{a: OneStepPipeline.from_pretrained(f"{work}/{a}_model") for a in arms}}
from diffusers import UNet2DConditionModel

teacher = UNet2DConditionModel.from_pretrained(f"{work}/teacher/unet", torch_dtype=torch.float32).eval()
db = Database.build(base, fam["n_retrieval"])
caps = make_split("adapter", offset + n).captions
a_t = float(base.alphas_cumprod[base.student_timestep])
out = {}
with torch.no_grad():
    unc = base.encode_text([""]).context.float()
    for name, rows in (("trained_rows", range(n)), ("unseen_rows", range(offset, offset + n))):
        ps = [caps[i] for i in rows]
        text = base.encode_text(ps)
        noise = base.initial_noise([ADAPTER_NOISE_SEED + i for i in rows]).float()
        tgt = sample(teacher, text.context.float(), unc, noise, fam["teacher_steps"], fam["guidance"])
        lam, idx = db.search(text.pooled, 1)
        h_nb = db.features[idx]
        z = noise * (1 - a_t) ** 0.5
        t = torch.full((n,), base.student_timestep, dtype=torch.long)
        for key, p in pipes.items():
            h, skips, temb = p.unet.encode(z, t, text.context)
            hh = h if key == "student" else p.hadapter(h.float(), h_nb.float(), lam.float())
            v = p.unet.decode(hh, skips, temb, text.context).float()
            x0 = x0_from_output(z, v, a_t, p.prediction_type)
            out[f"{name}/{key}"] = F.smooth_l1_loss(x0, tgt, beta=0.1).item()
print(json.dumps(out, indent=1))
