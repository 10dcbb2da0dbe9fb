"""Stage 2: the text encoder (CLIPTextModel), trained CLIP-style against an image encoder.

The pipeline retrieves by cosine over ``pooler_output`` (B,D) and conditions the UNet
on ``last_hidden_state`` (B,77,D), so the contrastive loss is put directly on the
pooled output: symmetric InfoNCE between normalised pooled text and the embedding
of a small CNN on the render (learned temperature). Auxiliary heads on both sides
classify what the caption states (shapes, colours, count / relation kind, relation)
so the embedding separates those attributes within a few thousand steps. The image
encoder and the heads are thrown away after training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab.toyworld.models.common import LossLog, batches, images_to_tensor, out_of_time
from toyworld.models.common import autocast
from toyworld.models.configs import FamilyConfig
from toyworld.scene import SceneSpec
from toyworld.vocab import COLOURS, RELATIONS, SHAPES
from training.schedule import lambda_lr

log = logging.getLogger(__name__)

KIND_CLASSES = ("one", "two", "three", "relation")
N_LABELS = {
    "shape0": len(SHAPES),
    "colour0": len(COLOURS),
    "kind": len(KIND_CLASSES),
    "shape1": len(SHAPES) + 1,
    "colour1": len(COLOURS) + 1,
    "relation": len(RELATIONS) + 1,
}


def attribute_labels(specs: Sequence[SceneSpec]) -> np.ndarray:
    """Class ids (N,6) of what every caption states (for the text encoder's auxiliary heads);
    the last class of shape1/colour1/relation means "none" (no second object)."""
    colours = list(COLOURS)
    out = np.zeros((len(specs), len(N_LABELS)), dtype=np.int64)
    for i, s in enumerate(specs):
        o0 = s.objects[0]
        kind = 3 if s.kind == "relation" else s.count - 1
        if s.kind == "relation":
            o1 = s.objects[1]
            sh1, co1 = SHAPES.index(o1.shape), colours.index(o1.colour)
            rel = RELATIONS.index(str(s.relation))
        else:
            sh1, co1, rel = len(SHAPES), len(COLOURS), len(RELATIONS)
        out[i] = (SHAPES.index(o0.shape), colours.index(o0.colour), kind, sh1, co1, rel)
    return out



class ImageEncoder(nn.Module):
    """(B,3,64,64) -> (B,D). Flattens the 8x8 map (no pooling) so positions survive."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.GroupNorm(8, 2 * w), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.GroupNorm(8, 4 * w), nn.GELU(),
            nn.Conv2d(4 * w, w, 1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(w * 64, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


class AttributeHeads(nn.Module):
    """(B,D) -> logits per attribute (dict of (B,n_classes))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in N_LABELS.items()})

    def loss(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy(h(emb), labels[:, j]) for j, h in enumerate(self.heads.values())) / len(self.heads)  # type: ignore[return-value]


def train_text_encoder(
    cfg: FamilyConfig,
    tokenizer: object,
    input_ids: torch.Tensor,
    images: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    time_limit_s: float | None = None,
) -> tuple[torch.nn.Module, LossLog]:
    """input_ids (N,77), images uint8 (N,64,64,3), labels (N,6) -> (CLIPTextModel, loss log)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed + 1)
    vocab = len(tokenizer)  # type: ignore[arg-type]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id  # type: ignore[attr-defined]
    te = CLIPTextModel(CLIPTextConfig(**cfg.text_kwargs(vocab, bos, eos))).to(device).train()
    d = cfg.text_hidden
    img_enc = ImageEncoder(cfg.image_encoder_width, d).to(device)
    t_heads, i_heads = AttributeHeads(d).to(device), AttributeHeads(d).to(device)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    params = [*te.parameters(), *img_enc.parameters(), *t_heads.parameters(), *i_heads.parameters(), logit_scale]
    run = cfg.text
    opt = torch.optim.AdamW(params, lr=run.lr, weight_decay=0.01)
    sched = lambda_lr(opt, 200, run.steps, "cosine", 0.0, time_limit_s)

    ids = input_ids.to(device)
    imgs = torch.as_tensor(images).to(device)
    lab = torch.as_tensor(labels).to(device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    lg = LossLog("text")
    step = 0
    for step, idx in enumerate(batches(len(ids), run.batch_size, gen, device), start=1):
        with autocast(device):
            t = te(ids[idx]).pooler_output.float()
            v = img_enc(images_to_tensor(imgs[idx], device)).float()
        tn, vn = F.normalize(t, dim=-1), F.normalize(v, dim=-1)
        logits = logit_scale.exp().clamp(max=100) * tn @ vn.T
        # Captions that state the same attributes are not negatives of each other.
        same = (lab[idx][:, None, :] == lab[idx][None, :, :]).all(-1)
        target = same.float() / same.float().sum(1, keepdim=True)
        clip = 0.5 * (
            torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
            + torch.sum(-target.T * F.log_softmax(logits.T, 1), 1).mean()
        )
        aux = t_heads.loss(t, lab[idx]) + i_heads.loss(v, lab[idx])
        loss = clip + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        lg.add(step, loss.item(), run.log_every)
        if step >= run.steps or out_of_time(lg.t0, time_limit_s):
            break
    return te.eval(), lg.finish(step)


@torch.no_grad()
def encode_all(te: torch.nn.Module, input_ids: torch.Tensor, device: torch.device, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (N,77) -> context (N,77,D) bf16 on CUDA / fp32 on CPU, pooled (N,D) fp32."""
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    ctx, pooled = [], []
    for i in range(0, len(input_ids), batch):
        out = te(input_ids[i : i + batch].to(device))
        ctx.append(out.last_hidden_state.to(dt))
        pooled.append(out.pooler_output.float())
    return torch.cat(ctx), torch.cat(pooled)
