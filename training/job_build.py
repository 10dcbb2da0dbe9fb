"""Building a training job: models (frozen and trained), data, latent cache and retriever."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.pipeline import OneStepPipeline
from engines.unet_split import HSplitUNet
from training.config import TrainConfig
from training.data import Pair, load_image, read_pairs
from training.discriminator import DiscHeads, TeacherFeatures
from training.model import StudentForward, add_up_lora, load_lora_state, lora_state
from training.retriever import NullRetriever, Retriever
from training.retriever_db import DbRetriever

log = logging.getLogger(__name__)


def load_teacher(path: str | Path, pipe: OneStepPipeline, device: torch.device) -> HSplitUNet:
    """The frozen teacher UNet (diffusers folder), checked against the student's shapes."""
    from diffusers import UNet2DConditionModel

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"teacher UNet folder {p} has no config.json")
    unet = UNet2DConditionModel.from_pretrained(str(p), local_files_only=True)
    c = unet.config
    want = {"in_channels": pipe.latent_channels, "cross_attention_dim": pipe.embed_dim}
    got = {"in_channels": c.in_channels, "cross_attention_dim": c.cross_attention_dim}
    if want != got:
        raise ValueError(f"teacher UNet {p} does not fit the student: needs {want}, has {got}")
    unet.requires_grad_(False).eval().to(device)
    return HSplitUNet(unet)


@dataclass
class Job:
    """Everything one training process holds."""

    cfg: TrainConfig
    device: torch.device
    pipe: OneStepPipeline
    gen: StudentForward
    tfeats: TeacherFeatures
    heads: DiscHeads
    pairs: list[Pair]
    retriever: Retriever
    latents: torch.Tensor | None  # (N,4,h,w) float32 on CPU when cached

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """Indices -> z0 (B,4,h,w), context (B,T,D), pooled (B,D) on the device, ids."""
        sel = [self.pairs[int(i)] for i in idx]
        if self.latents is not None:
            z0 = self.latents[torch.as_tensor(idx)].to(self.device)
        else:
            z0 = pair_latents(self.pipe, sel).to(self.device)
        text = self.pipe.encode_text([p.caption for p in sel])
        # clone: tensors made under inference_mode cannot enter autograd
        return z0.clone(), text.context.clone(), text.pooled.clone(), [p.id for p in sel]

    def trainable_state(self) -> dict[str, Any]:
        return {
            "hadapter": {k: v.detach().cpu() for k, v in self.pipe.hadapter.state_dict().items()},
            "hadapter_config": dict(self.pipe.hadapter.config),
            "lora": lora_state(self.pipe.unet.unet) if self.cfg.lora_rank > 0 else {},
            "lora_config": {"rank": self.cfg.lora_rank, "alpha": self.cfg.lora_alpha,
                            "targets": list(self.cfg.lora_targets)},
            "heads": {k: v.detach().cpu() for k, v in self.heads.state_dict().items()},
            "student": self.cfg.student,
        }

    def load_trainable(self, ck: dict[str, Any]) -> None:
        self.pipe.hadapter.load_state_dict(ck["hadapter"])
        if self.cfg.lora_rank > 0:
            load_lora_state(self.pipe.unet.unet, ck["lora"])
        self.heads.load_state_dict(ck["heads"])

    def trainable_counts(self) -> dict[str, int]:
        lora = sum(p.numel() for n, p in self.gen.trainable() if "lora_" in n)
        adapter = sum(p.numel() for p in self.pipe.hadapter.parameters() if p.requires_grad)
        heads = sum(p.numel() for p in self.heads.parameters())
        return {"hadapter": adapter, "lora": lora, "disc_heads": heads}


def pair_latents(pipe: OneStepPipeline, pairs: list[Pair]) -> torch.Tensor:
    """Target latents (B,4,h,w) float32 on CPU: stored latents, else VAE means of the images."""
    shape = (pipe.latent_channels, pipe.latent_size, pipe.latent_size)
    out: list[torch.Tensor | None] = [None] * len(pairs)
    todo = []
    for i, p in enumerate(pairs):
        if p.latent is not None:
            if p.latent.size != int(np.prod(shape)):
                raise ValueError(f"pair {p.id}: latent has {p.latent.size} values, student needs {shape}")
            out[i] = torch.from_numpy(p.latent.reshape(shape).astype(np.float32))
        else:
            todo.append(i)
    if todo:
        imgs = np.stack([load_image(pairs[i], pipe.resolution) for i in todo])
        lat = pipe.encode_images(imgs).float().cpu()
        for j, i in enumerate(todo):
            out[i] = lat[j]
    return torch.stack(out)  # type: ignore[arg-type]


def _encode_all(
    pipe: OneStepPipeline, pairs: list[Pair], with_features: bool, bs: int = 8
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    lats, pooled, feats = [], [], []
    for i in range(0, len(pairs), bs):
        chunk = pairs[i : i + bs]
        lat = pair_latents(pipe, chunk)
        lats.append(lat)
        if with_features:
            text = pipe.encode_text([p.caption for p in chunk])
            pooled.append(text.pooled.float().cpu())
            h = pipe.retrieval_features(lat.to(pipe.device), text.context)
            feats.append(h.cpu().to(torch.float16))
    return (
        torch.cat(lats),
        torch.cat(pooled) if with_features else None,
        torch.cat(feats) if with_features else None,
    )


def index_pairs(pipe: OneStepPipeline, pairs: list[Pair], min_score: float, bs: int = 8) -> DbRetriever:
    """An exact in-memory index over ``pairs``: pooled caption embeddings and H-features of
    their clean latents, computed with the frozen student."""
    _, pooled, feats = _encode_all(pipe, pairs, True, bs)
    assert pooled is not None and feats is not None
    return DbRetriever.in_memory([p.id for p in pairs], pooled, feats, min_score)


def build_retriever(cfg: TrainConfig, pipe: OneStepPipeline, bs: int = 8) -> Retriever:
    """The configured retriever for ``source: db`` or a ``dataset`` with its own ``path``
    (an index over the training pairs themselves is built with the latent cache)."""
    r = cfg.retrieval
    assert r is not None
    if r.source == "dataset":
        if not r.path:
            raise ValueError("retrieval.source 'dataset' over the training pairs is built by the job itself")
        return index_pairs(pipe, read_pairs(r.path), r.min_score, bs)
    return DbRetriever.open(pipe, db_path=r.db_path, qdrant_url=r.qdrant_url,
                            qdrant_api_key=r.qdrant_api_key, min_score=r.min_score)


def build_job(cfg: TrainConfig, device: torch.device, retriever: Retriever | None) -> Job:
    pipe = OneStepPipeline.from_pretrained(cfg.student, device=device)
    for m in pipe.modules().values():
        m.requires_grad_(False)
    unet = pipe.unet.unet
    if cfg.lora_rank > 0:
        n = add_up_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        log.info("LoRA rank %d on up blocks: %d parameters", cfg.lora_rank, n)
    pipe.hadapter.requires_grad_(True).train()
    pipe.unet.train()
    teacher = load_teacher(cfg.teacher_unet, pipe, device)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        teacher.unet.enable_gradient_checkpointing()
    gen = StudentForward(pipe)
    tfeats = TeacherFeatures(teacher)
    heads = DiscHeads(
        tfeats.stage_channels, cond_dim=pipe.embed_dim, temb_dim=tfeats.temb_dim,
        hidden=cfg.loss.disc_head_channels, stages=cfg.loss.disc_stages,
    ).to(device)

    pairs = read_pairs(cfg.data.path, cfg.data.format, cfg.data.max_items)
    if cfg.batch_size > len(pairs) * 64:
        log.warning("batch_size %d is much larger than the dataset (%d pairs)", cfg.batch_size, len(pairs))
    r = cfg.retrieval
    own_index = retriever is None and r is not None and r.source == "dataset" and not r.path
    latents = None
    if cfg.data.cache_latents or own_index:
        latents, pooled, feats = _encode_all(pipe, pairs, own_index)
        log.info("encoded %d target latents%s", len(pairs), " and H-features" if own_index else "")
        if own_index:
            assert pooled is not None and feats is not None and r is not None
            retriever = DbRetriever.in_memory([p.id for p in pairs], pooled, feats, r.min_score)
        if not cfg.data.cache_latents:
            latents = None
    if cfg.is_control:
        retriever = NullRetriever(pipe.h_shape)
    elif retriever is None:
        retriever = build_retriever(cfg, pipe)
    log.info("retrieval: %s", type(retriever).__name__ + (" (control run)" if cfg.is_control else ""))
    return Job(cfg, device, pipe, gen, tfeats, heads, pairs, retriever, latents)
