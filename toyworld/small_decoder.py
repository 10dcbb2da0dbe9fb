"""A distilled small VAE decoder for the toy world, trained and measured on CPU.

``ragturbo toyworld small-decoder [--model DIR] [--report FILE]``: a ``diffusers`` VAE
``Decoder`` with every block width divided by ``width_div`` is trained to reproduce the
model's full decoder on two kinds of latents:

* the VAE posterior means of rendered train-split scenes (what ingest stores), and
* the one-step student's x0 for train-split captions (what the service decodes),

with L1 + MSE against the full decoder's float output (the full decoder is the teacher;
no pixels of the scenes are used): the first half of the steps on random 8x8 latent
windows and the matching 32x32 pixels of the full decoder's output (16 windows cost what 4
whole latents do), the second half on whole latents, batch 4 — a decoder trained on windows
only is worse on whole latents (its borders and the mid-block attention see less context:
loss 0.11 on whole latents against 0.06 on windows in a trial). It is written to ``DIR/vae_small`` (engines/vae_decoder.py
layout) and measured on the eval split, which training never sees: PSNR of the small
decoder's uint8 images against the full decoder's, on student x0 of held-out eval prompts
and on latents of eval renders, and the toy-world checker's fidelity of the student's
images decoded both ways (paired bootstrap over prompts). Deterministic for a fixed seed
(one CPU thread, fixed); about 8 minutes on one core of a shared 2-core machine.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engines.default_model import SHIPPED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmallDecoderConfig:
    width_div: int = 2
    n_scenes: int = 1024  # rendered train-split scenes
    n_student: int = 1024  # student x0 of train-split captions (one seed each)
    steps: int = 2400
    batch: int = 16
    crop: int = 8  # first steps: random crop x crop latent windows (and their pixels), batch
    crop_frac: float = 0.5  # share of steps on crops; the rest on whole latents, batch // 4
    lr: float = 3e-3
    seed: int = 0
    threads: int = 1  # fixed, so the result does not depend on the machine's core count
    n_eval_common: int = 96  # held-out eval prompts (common, then long-tail)
    n_eval_longtail: int = 32


def _train_data(pipe: Any, cfg: SmallDecoderConfig) -> tuple[torch.Tensor, list[str]]:
    """Latents (N,4,16,16) of rendered train scenes then student x0 of train captions."""
    from toyworld.models.data import make_split

    n = max(cfg.n_scenes, cfg.n_student)
    sp = make_split("train", n, workers=1)
    scenes = torch.cat([pipe.encode_images(sp.images[i : i + 256]) for i in range(0, cfg.n_scenes, 256)])
    caps = list(sp.captions[: cfg.n_student])
    x0 = _student_x0(pipe, caps, seeds=[10_000 + i for i in range(len(caps))])
    return torch.cat([scenes.float(), x0.float()]), caps


@torch.inference_mode()
def _student_x0(pipe: Any, prompts: list[str], seeds: list[int], chunk: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(prompts), chunk):
        text = pipe.encode_text(prompts[i : i + chunk])
        out.append(pipe.denoise(text, seeds[i : i + chunk], "off"))
    return torch.cat(out)


@torch.inference_mode()
def _decode_float(vae: Any, decoder: torch.nn.Module, z: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Scaled latents -> decoder output (B,3,H,W) float (before the uint8 rounding)."""
    sf = float(vae.config.scaling_factor)
    return torch.cat([decoder(vae.post_quant_conv(z[i : i + chunk] / sf)) for i in range(0, len(z), chunk)])


def _uint8(img: torch.Tensor) -> np.ndarray:
    from engines.rules import images_to_uint8

    return images_to_uint8(img).numpy()


def psnr(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """uint8 images (N,H,W,3): PSNR over all pixels, mean and min per image, max abs level."""
    d = ref.astype(np.float64) - got.astype(np.float64)
    per = (d**2).reshape(len(d), -1).mean(1)

    def db(mse: float) -> float:
        return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)

    return {"psnr_db": round(db(float(per.mean())), 2), "psnr_mean_per_image_db": round(float(np.mean([db(m) for m in per])), 2),
            "psnr_min_image_db": round(min(db(m) for m in per), 2), "max_abs": int(np.abs(d).max()),
            "pct_gt2_levels": round(100.0 * float((np.abs(d) > 2).mean()), 3)}


def train(full_vae: Any, latents: torch.Tensor, cfg: SmallDecoderConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Distil the small decoder on ``latents``; returns (decoder in eval mode, loss log)."""
    from engines.vae_decoder import build_decoder, small_decoder_kwargs

    torch.manual_seed(cfg.seed)
    kw = small_decoder_kwargs(full_vae.config, cfg.width_div)
    dec = build_decoder(kw).train()
    sf = float(full_vae.config.scaling_factor)
    with torch.inference_mode():
        inputs = torch.cat([full_vae.post_quant_conv(latents[i : i + 512] / sf) for i in range(0, len(latents), 512)])
        targets = _decode_float(full_vae, full_vae.decoder, latents)
    inputs, targets = inputs.clone(), targets.clone()
    up = targets.shape[-1] // inputs.shape[-1]
    opt = torch.optim.AdamW(dec.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    curve: list[tuple[int, float]] = []
    run = 0.0
    for step in range(1, cfg.steps + 1):
        c, lat = cfg.crop, inputs.shape[-1]
        on_crops = 0 < c < lat and step <= cfg.crop_frac * cfg.steps
        idx = torch.randint(0, len(inputs), (cfg.batch if on_crops else max(1, cfg.batch // 4),), generator=gen)
        x, y = inputs[idx], targets[idx]
        if on_crops:
            i, j = (int(v) for v in torch.randint(0, lat - c + 1, (2,), generator=gen))
            x = x[..., i : i + c, j : j + c]
            y = y[..., i * up : (i + c) * up, j * up : (j + c) * up]
        out = dec(x)
        loss = F.l1_loss(out, y) + F.mse_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
        opt.step()
        sched.step()
        run += loss.item()
        if step % 100 == 0 or step == cfg.steps:
            n = 100 if step % 100 == 0 else step % 100
            curve.append((step, round(run / n, 5)))
            log.info("small decoder step %d/%d loss %.5f (%.0f s)", step, cfg.steps, run / n, time.perf_counter() - t0)
            run = 0.0
    return dec.eval().requires_grad_(False), {"curve": curve, "train_s": round(time.perf_counter() - t0, 1),
                                              "decoder_kwargs": kw}


def _decode_ms(vae: Any, dec: torch.nn.Module, z: torch.Tensor, reps: int = 3) -> float:
    _decode_float(vae, dec, z)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        _decode_float(vae, dec, z)
        ts.append((time.perf_counter() - t) * 1e3)
    return round(sorted(ts)[len(ts) // 2] / len(z), 3)


def evaluate(pipe: Any, small: torch.nn.Module, cfg: SmallDecoderConfig) -> dict[str, Any]:
    """PSNR against the full decoder and checker fidelity, on the held-out eval split."""
    from toyworld.models.data import eval_prompts
    from toyworld.render import render
    from toyworld.scoring import aggregate, paired_bootstrap, score_images
    from toyworld.splits import eval_example

    vae = pipe.vae
    prompts, tail = eval_prompts(cfg.n_eval_common, cfg.n_eval_longtail)
    x0 = _student_x0(pipe, prompts, seeds=list(range(len(prompts))))
    full_img = _uint8(_decode_float(vae, vae.decoder, x0))
    small_img = _uint8(_decode_float(vae, small, x0))
    rows_full = score_images(full_img, prompts)
    rows_small = score_images(small_img, prompts)
    sf_, ss_ = np.array([r["overall"] for r in rows_full]), np.array([r["overall"] for r in rows_small])
    t = np.array(tail)
    renders = np.stack([render(eval_example(i).scene) for i in range(len(prompts))])
    z_scene = pipe.encode_images(renders)
    sc_full = _uint8(_decode_float(vae, vae.decoder, z_scene))
    sc_small = _uint8(_decode_float(vae, small, z_scene))
    return {
        "eval_prompts": len(prompts), "long_tail_prompts": int(t.sum()),
        "student_x0": {
            "small_vs_full": psnr(full_img, small_img),
            "checker_full": aggregate(rows_full), "checker_small": aggregate(rows_small),
            "checker_small_minus_full": paired_bootstrap(ss_, sf_),
            "checker_small_minus_full_long_tail": paired_bootstrap(ss_[t], sf_[t]),
        },
        "eval_scene_latents": {
            "small_vs_full": psnr(sc_full, sc_small),
            "full_vs_render": psnr(renders, sc_full), "small_vs_render": psnr(renders, sc_small),
        },
        "cpu_decode_ms_per_image_b64": {"full": _decode_ms(vae, vae.decoder, x0[:64]),
                                         "small": _decode_ms(vae, small, x0[:64])},
    }


def run(model_dir: str | Path = SHIPPED, cfg: SmallDecoderConfig | None = None,
        report: str | Path | None = None, write: bool = True) -> dict[str, Any]:
    """Train, evaluate and (``write``) save ``model_dir/vae_small``; returns the report."""
    cfg = cfg or SmallDecoderConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(Path(model_dir), cfg, report, write)
    finally:
        torch.set_num_threads(threads)


def _run(model_dir: Path, cfg: SmallDecoderConfig, report: str | Path | None, write: bool) -> dict[str, Any]:
    from engines.modeldir import file_sha256
    from engines.pipeline import OneStepPipeline
    from engines.vae_decoder import (
        SMALL_DIR,
        _vae_weights,
        param_count,
        save_small_decoder,
    )

    t0 = time.perf_counter()
    pipe = OneStepPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)
    for m in pipe.modules().values():
        m.eval().requires_grad_(False)
    latents, _ = _train_data(pipe, cfg)
    t_data = time.perf_counter() - t0
    small, tr = train(pipe.vae, latents, cfg)
    res: dict[str, Any] = {
        "config": asdict(cfg), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "params": {"full_decoder": param_count(pipe.vae.decoder), "small_decoder": param_count(small)},
        "data_s": round(t_data, 1), **tr,
    }
    res["eval"] = evaluate(pipe, small, cfg)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    if write:
        src = _vae_weights(model_dir)
        ev = res["eval"]
        extra = {"distilled_from_vae_sha256": file_sha256(src) if src else None,
                 "training": {**asdict(cfg), "command": "ragturbo toyworld small-decoder"},
                 "measured": {"psnr_vs_full_student_db": ev["student_x0"]["small_vs_full"]["psnr_db"],
                              "psnr_vs_full_scenes_db": ev["eval_scene_latents"]["small_vs_full"]["psnr_db"],
                              "checker_full": ev["student_x0"]["checker_full"]["overall"],
                              "checker_small": ev["student_x0"]["checker_small"]["overall"]}}
        save_small_decoder(small, tr["decoder_kwargs"], model_dir / SMALL_DIR, extra)
        log.info("wrote %s", model_dir / SMALL_DIR)
    if report is not None:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res


def summary(res: dict[str, Any]) -> str:
    ev = res["eval"]
    s, sc = ev["student_x0"], ev["eval_scene_latents"]
    d = s["checker_small_minus_full"]
    return "\n".join([
        (f"small decoder {res['params']['small_decoder']} params (full {res['params']['full_decoder']}), "
        f"trained {res['config']['steps']} steps in {res['train_s']} s (data {res['data_s']} s, total {res['total_s']} s)"),
        (f"student x0, {ev['eval_prompts']} held-out eval prompts: PSNR small vs full {s['small_vs_full']['psnr_db']} dB "
        f"(min image {s['small_vs_full']['psnr_min_image_db']}); checker full {s['checker_full']['overall']:.4f}, "
        f"small {s['checker_small']['overall']:.4f}, diff {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"),
        (f"eval scene latents: PSNR small vs full {sc['small_vs_full']['psnr_db']} dB; vs the render: "
        f"full {sc['full_vs_render']['psnr_db']} dB, small {sc['small_vs_render']['psnr_db']} dB"),
        f"CPU decode ms/image (b64): {ev['cpu_decode_ms_per_image_b64']}",
    ])
