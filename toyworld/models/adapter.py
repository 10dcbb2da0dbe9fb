"""Stages 5-6: the H-adapter (+ up-block LoRA) with the training job, and its control.

Both call ``training.adapter.train`` on the exported student (``workdir/model``) with
the teacher UNet for the discriminator. Targets are *paired*: the teacher's CFG samples
(``teacher_steps`` DDIM steps, guidance ``guidance``) for training-split captions, each
with the ``noise_seed`` it started from, so the student sees exactly that noise and the
regression losses compare like with like (``write_teacher_dataset``). The first GPU run
regressed to real renders under unpaired noise and collapsed to the mean (near-black)
image. Retrieval is an exact in-memory
cosine index over the *retrieval split* (``RetrievalSplitDB``), the same database the eval
and the service search, so neighbours can show long-tail combinations the training
targets rarely contain. The control run is the same job with its control switch on
(every neighbour null, λ = 0). Each run is exported with ``training.export`` to
``workdir/<stage>_model`` (weights cast to fp16).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from retrieval.db import RetrievalDB

log = logging.getLogger(__name__)


@dataclass
class RetrievalSplitDB:
    """The retrieval split in memory: captions, normalised pooled embeddings (N,D), H (N,C,h,w).

    ``as_db`` serves it to ``retrieval.compose`` as a ``retrieval.db.RetrievalDB`` (exact
    cosine in memory, λ by ``engines.rules.neighbour_lambda``), the path the service runs.
    """

    ids: list[str]
    captions: list[str]
    pooled: torch.Tensor
    features: torch.Tensor
    long_tail: np.ndarray

    @staticmethod
    def build(pipe: Any, n: int, batch: int = 512) -> RetrievalSplitDB:
        """Regenerate items 0..n-1 of the retrieval split and compute their features with ``pipe``."""
        from toyworld.models.data import make_split

        return RetrievalSplitDB.from_split(pipe, make_split("retrieval", n), batch)

    @staticmethod
    def from_split(pipe: Any, sp: Any, batch: int = 512) -> RetrievalSplitDB:
        """The pairs of a ``toyworld.models.data.Split`` with images: normalised pooled caption
        embeddings and H-features (the student's encoder at t = 0) computed with ``pipe``."""
        assert sp.images is not None
        n = len(sp)
        pooled, feats = [], []
        for i in range(0, n, batch):
            te = pipe.encode_text(sp.captions[i : i + batch])
            lat = pipe.encode_images(sp.images[i : i + batch])
            feats.append(pipe.retrieval_features(lat, te.context).float())
            pooled.append(torch.nn.functional.normalize(te.pooled.float(), dim=-1))
        ids = [f"retrieval-{i}" for i in range(n)]
        return RetrievalSplitDB(ids, sp.captions, torch.cat(pooled), torch.cat(feats), sp.long_tail)

    def as_db(self) -> RetrievalDB:
        """A ``retrieval.db.RetrievalDB`` over these pairs, searched on the device they live on."""
        from retrieval.db import RetrievalDB
        from retrieval.memory_index import MemoryFeatures, MemoryIndex

        index = MemoryIndex.from_vectors(self.ids, self.pooled, [{"caption": c} for c in self.captions],
                                         device=self.pooled.device, unit=True)
        return RetrievalDB(index, MemoryFeatures(self.ids, self.features))


def write_folder_dataset(out: Path, images: np.ndarray, captions: list[str]) -> Path:
    """PNG files + captions.jsonl (the training job's folder format)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    with (out / "captions.jsonl").open("w") as f:
        for i, (im, cap) in enumerate(zip(images, captions, strict=True)):
            name = f"{i:06d}.png"
            Image.fromarray(im).save(out / name, compress_level=1)
            f.write(json.dumps({"file": name, "caption": cap, "id": f"train-{i}"}) + "\n")
    return out


ADAPTER_MAX_LR = 5e-5
"""Cap on the adapter stage's learning rate (the paper uses 1e-5)."""
ADAPTER_NOISE_SEED = 1_000_000
"""Noise seed of the first adapter target (sample i: + i); clear of the eval seeds (1000·i + j)."""


def write_teacher_dataset(
    out: Path, student: Path, teacher_unet: Path, captions: list[str], steps: int, guidance: float,
    device: str, seed: int = ADAPTER_NOISE_SEED, batch: int = 256,
) -> Path:
    """Paired targets: teacher samples of ``captions`` from noise seeds seed + i, written as
    ``out/data.parquet`` (exact latents + ``noise_seed``); returns the parquet path."""
    from training.teacher_samples import noise_seeds, sample_teacher, write_dataset

    images, latents = sample_teacher(student, teacher_unet, captions, steps=steps, cfg=guidance,
                                     scheduler="ddim", seed=seed, batch_size=batch, device=device)
    return write_dataset(out, captions, images, latents, "parquet", noise_seeds(seed, len(captions)))


def to_fp16_dir(d: Path) -> None:
    """Rewrite every float32 safetensors file under ``d`` as fp16 (halves the shipped size)."""
    from safetensors.torch import load_file, save_file

    for f in d.rglob("*.safetensors"):
        sd = load_file(str(f))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(f), metadata={"format": "pt"})


def stage_adapter(st: Any, control: bool, limit: float | None = None) -> dict[str, Any]:
    """Train (control=False: with retrieval; True: λ = 0) and export to workdir/<stage>_model."""
    from engines.pipeline import OneStepPipeline
    from training.adapter import train
    from training.export import export_checkpoint
    from training.retriever import InMemoryRetriever

    name = "control" if control else "adapter"
    cfg = st.cfg
    work: Path = st.work
    data_dir = work / "adapter_teacher_data"
    n_data = min(len(st.train_split()), cfg.n_distill, 20000)
    if not (data_dir / "data.parquet").is_file():
        sp = st.train_split()
        write_teacher_dataset(data_dir, work / "model", work / "teacher" / "unet", sp.captions[:n_data],
                              cfg.teacher_steps, cfg.guidance, str(st.device))
    retriever = None
    if not control:
        pipe = OneStepPipeline.from_pretrained(work / "model", device=st.device)
        db = RetrievalSplitDB.build(pipe, cfg.n_retrieval)
        retriever = InMemoryRetriever(db.ids, db.pooled, db.features, 0.0)
        del pipe
    run = cfg.adapter
    tc: dict[str, Any] = {
        "student": str(work / "model"),
        "teacher_unet": str(work / "teacher" / "unet"),
        "output_dir": str(work / f"{name}_run"),
        "data": {"path": str(data_dir / "data.parquet"), "format": "parquet"},
        "control": control,
        "steps": run.steps,
        "batch_size": run.batch_size,
        "seed": cfg.seed,
        "lora_rank": 8,
        "optim": {"lr": min(run.lr, ADAPTER_MAX_LR), "disc_lr": min(run.lr, ADAPTER_MAX_LR),
                  "warmup_steps": min(100, run.steps // 10)},
        "loss": {"disc_t_steps": cfg.teacher_steps},
        "log_every": run.log_every,
        "ckpt_every": max(run.steps // 2, 1),
        "progress": False,
        "device": str(st.device),
    }
    if control:
        tc["retrieval"] = None
    res = train(tc, retriever=retriever)
    out = work / f"{name}_model"
    export_checkpoint(res.output_dir, out, student=work / "model", overwrite=True)
    to_fp16_dir(out)
    hist = [(int(h.get("step", i)), float(h.get("loss_g", float("nan")))) for i, h in enumerate(res.history)]
    return {
        "stage": name,
        "steps": res.steps,
        "final": res.final,
        "first_loss_g": hist[0][1] if hist else None,
        "final_loss_g": res.final.get("loss_g"),
        "n_data": n_data,
    }
