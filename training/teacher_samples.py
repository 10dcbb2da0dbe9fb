"""Teacher-generated targets: the teacher UNet's multi-step sampler with classifier-free guidance.

The teacher shares the student directory's tokenizer, text encoder, VAE and scheduler
config; a diffusers DDIM or Euler scheduler runs ``steps`` steps with guidance ``cfg``
(ε_u + cfg·(ε_c − ε_u), the unconditional branch on the empty prompt). Output is a
training dataset: a folder (``images/*.png`` + ``captions.jsonl`` + ``latents.npy``, the exact
teacher latents) or a parquet file with
``id``, ``caption``, ``image`` (PNG bytes) and ``latent`` (the exact teacher latent, so
training needs no VAE round trip).

Every sample records its ``noise_seed``: sample i starts from
``OneStepPipeline.initial_noise([seed + i])`` (``torch.randn(shape,
generator=torch.Generator().manual_seed(seed + i))``) times the scheduler's
``init_noise_sigma``, so the training job can give the student exactly the same ε and
regress its one-step output to the teacher sample *from that noise* (a paired target).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

log = logging.getLogger(__name__)


def read_prompts(path: str | Path) -> list[str]:
    """A .txt (one prompt a line) or .jsonl (``caption`` or ``prompt`` per line) file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {p} does not exist")
    out: list[str] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            rec = json.loads(line)
            text = rec.get("caption", rec.get("prompt"))
            if not isinstance(text, str):
                raise ValueError(f"{p}:{n}: needs a 'caption' or 'prompt' string")
            out.append(text)
        else:
            out.append(line.strip())
    if not out:
        raise ValueError(f"prompts file {p} is empty")
    return out


def noise_seeds(seed: int, n: int) -> list[int]:
    """The noise seed of each of ``n`` samples generated with ``--seed seed``: seed + i."""
    return [seed + i for i in range(n)]


@torch.no_grad()
def guided_sample(unet: torch.nn.Module, sched: Any, z: torch.Tensor, ctx2: torch.Tensor, guidance: float,
                  amp: bool = False) -> torch.Tensor:
    """Classifier-free guided sampling: ``sched`` (a diffusers scheduler, timesteps set) from
    latents ``z`` (B,4,h,w), ``ctx2`` the unconditional then the conditional context (2B,T,D),
    the model output ``u + guidance·(c − u)``; ``amp``: the UNet under bf16 autocast."""
    for t in sched.timesteps:
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=amp):
            out = unet(sched.scale_model_input(torch.cat([z, z]), t), t, encoder_hidden_states=ctx2).sample.float()
        e_u, e_c = out.chunk(2)
        z = sched.step(e_u + guidance * (e_c - e_u), t, z).prev_sample
    return z


@torch.no_grad()
def sample_teacher(
    student: str | Path,
    teacher_unet: str | Path,
    prompts: Sequence[str],
    *,
    steps: int = 50,
    cfg: float = 7.5,
    scheduler: Literal["ddim", "euler"] = "ddim",
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    prediction_type: str | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """-> images uint8 (N,H,W,3), latents (N,4,h,w) float32 CPU.

    Sample i starts from ``pipe.initial_noise([seed + i]) * init_noise_sigma`` — the ε the
    one-step student sees for ``noise_seed = seed + i`` (``noise_seeds(seed, N)``)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from engines.pipeline import OneStepPipeline
    from training.job_build import load_teacher

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    dev = torch.device(device)
    pipe = OneStepPipeline.from_pretrained(student, device=dev)
    teacher = load_teacher(teacher_unet, pipe, dev).unet
    sc = dict(pipe.scheduler_config)
    # diffusers' DDIM clips x0 to [-1, 1] unless the config says otherwise: right for pixels,
    # wrong for latents (SD's own scheduler configs set clip_sample false; a config written for
    # another scheduler, e.g. Euler, lacks the key and would get the clipping)
    sc.setdefault("clip_sample", False)
    if prediction_type:
        sc["prediction_type"] = prediction_type
    if scheduler not in ("ddim", "euler"):
        raise ValueError(f"scheduler must be ddim or euler, got {scheduler!r}")
    cls = DDIMScheduler if scheduler == "ddim" else EulerDiscreteScheduler
    uncond = pipe.encode_text([""]).context
    shape = (pipe.latent_channels, pipe.latent_size, pipe.latent_size)
    imgs, lats = [], []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        b = len(chunk)
        sched = cls.from_config(sc)
        sched.set_timesteps(steps, device=dev)
        ctx = pipe.encode_text(chunk).context
        ctx2 = torch.cat([uncond.expand(b, -1, -1), ctx])
        eps = pipe.initial_noise(noise_seeds(seed + i, b)).float()
        assert eps.shape[1:] == shape, (eps.shape, shape)
        z = guided_sample(teacher, sched, eps.to(dev) * float(sched.init_noise_sigma), ctx2, cfg)
        lats.append(z.float().cpu())
        imgs.append(pipe.decode_latents(z))
        log.info("teacher samples %d/%d", min(i + b, len(prompts)), len(prompts))
    return np.concatenate(imgs), torch.cat(lats)


def write_dataset(
    out: str | Path,
    prompts: Sequence[str],
    images: np.ndarray,
    latents: torch.Tensor,
    fmt: Literal["folder", "parquet"] = "folder",
    noise_seeds: Sequence[int] | None = None,
) -> Path:
    """Write samples as a training dataset; returns the path to pass as ``data.path``.

    ``noise_seeds`` (one per sample): recorded as the ``noise_seed`` field / column, which
    makes each row a paired target for the training job (docs/training.md)."""
    if noise_seeds is not None and len(noise_seeds) != len(prompts):
        raise ValueError(f"{len(noise_seeds)} noise seeds for {len(prompts)} prompts")
    from PIL import Image

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "folder":
        (root / "images").mkdir(exist_ok=True)
        lines = []
        for i, (p, im) in enumerate(zip(prompts, images, strict=True)):
            name = f"images/{i:06d}.png"
            Image.fromarray(im).save(root / name)
            rec: dict[str, object] = {"file": name, "caption": p}
            if noise_seeds is not None:
                rec["noise_seed"] = int(noise_seeds[i])
            lines.append(json.dumps(rec))
        np.save(root / "latents.npy", latents.float().numpy())
        (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
        return root
    if fmt != "parquet":
        raise ValueError(f"format must be folder or parquet, got {fmt!r}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrieval.types import point_id

    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    cols: dict[str, object] = {
        "id": [point_id(p, b) for p, b in zip(prompts, pngs, strict=True)],
        "caption": list(prompts),
        "image": pngs,
        "latent": [lat.flatten().numpy().tolist() for lat in latents],
    }
    if noise_seeds is not None:
        cols["noise_seed"] = pa.array([int(x) for x in noise_seeds], type=pa.int64())
    table = pa.table(cols)
    path = root / "data.parquet"
    pq.write_table(table, path)
    return path
