"""Does H-space carry content? The swap probe, for any one-step model directory.

For each prompt P (seed s) a partner prompt B (P's list rolled by half its length) is
encoded from the *same* noise, and the student's decoder is run on a mix of the two
encoder outputs; the checker scores every image against P and against B:

* ``own``        — P's H, P's skips, P's decoder text (the plain student);
* ``swap_h``     — B's H-space feature, P's skips and decoder text;
* ``swap_skips`` — B's skip connections, P's H and decoder text;
* ``swap_text``  — B's caption context in the decoder's cross-attention, P's H and skips
  (a no-op when the decoder has no cross-attention);
* ``oracle_h``   — the H of a clean render of P (encoder at t = 0 with P's caption),
  rescaled to the norm of P's own H, in place of P's H;
* ``oracle_h_b`` — the same for a clean render of B: the clean H of another image.

An architecture whose H carries content moves to B under ``swap_h`` (score vs B up, vs P
down); one whose decoder reads the caption itself moves under ``swap_text``. With an
adapter directory (a model with a trained H-adapter) two more rows use the adapter:
``adapter_oracle`` (neighbour = the clean render of P, λ = 1) and ``adapter_leak`` (the
neighbour is the target itself: the teacher's sample for (P, s), needs ``teacher_unet``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

PROBE_MODES = ("own", "swap_h", "swap_skips", "swap_text", "oracle_h", "oracle_h_b")


@torch.no_grad()
def _decode(pipe: Any, z: torch.Tensor, h: torch.Tensor, skips: Any, temb: torch.Tensor, ctx: torch.Tensor) -> np.ndarray:
    out = pipe.unet.decode(h, skips, temb, ctx)
    return pipe.decode_latents(pipe.predict_x0(z, out))


def _norm_match(h: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    n = h.flatten(1).norm(dim=1).clamp_min(1e-6)
    r = ref.flatten(1).norm(dim=1)
    return h * (r / n)[:, None, None, None]


@torch.no_grad()
def probe(
    model_dir: str | Path,
    prompts: list[str],
    seeds_per_prompt: int = 1,
    adapter_dir: str | Path | None = None,
    teacher_unet: str | Path | None = None,
    device: str = "auto",
    batch: int = 512,
    workers: int | None = None,
    teacher_steps: int = 25,
    guidance: float = 3.0,
) -> dict[str, Any]:
    """-> {"modes": {mode: {"vs_own": score, "vs_other": score}}, "layout": {...}, ...}."""
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import oracle_images
    from toyworld.models.common import pick_device
    from toyworld.scoring import score_images

    if len(prompts) < 2:
        raise ValueError("the probe needs at least 2 prompts (each is swapped with another)")
    dev = pick_device(device)
    pipe = OneStepPipeline.from_pretrained(model_dir, device=dev)
    ad = OneStepPipeline.from_pretrained(adapter_dir, device=dev) if adapter_dir else None
    teacher = None
    if teacher_unet is not None and ad is not None:
        from diffusers import UNet2DConditionModel

        teacher = UNet2DConditionModel.from_pretrained(str(teacher_unet), torch_dtype=torch.float32).to(dev).eval()
    n = len(prompts)
    other = [prompts[(i + n // 2) % n] for i in range(n)]
    orc = oracle_images(prompts)
    S = seeds_per_prompt
    flat = [(i, j) for i in range(n) for j in range(S)]
    imgs: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(flat), batch):
        part = flat[lo : lo + batch]
        ps = [prompts[i] for i, _ in part]
        bs = [other[i] for i, _ in part]
        seeds = [1000 * i + j for i, j in part]
        tp, tb = pipe.encode_text(ps), pipe.encode_text(bs)
        z = pipe.noisy_input(pipe.initial_noise(seeds))
        t = torch.full((len(part),), pipe.student_timestep, device=dev, dtype=torch.long)
        hp, sp, ep = pipe.unet.encode(z, t, tp.context)
        hb, sb, _ = pipe.unet.encode(z, t, tb.context)
        oi = torch.as_tensor([i for i, _ in part])
        o_p = pipe.retrieval_features(pipe.encode_images(orc[oi.numpy()]), tp.context)
        o_b = pipe.retrieval_features(pipe.encode_images(orc[((oi + n // 2) % n).numpy()]), tb.context)
        rows = {
            "own": _decode(pipe, z, hp, sp, ep, tp.context),
            "swap_h": _decode(pipe, z, hb, sp, ep, tp.context),
            "swap_skips": _decode(pipe, z, hp, sb, ep, tp.context),
            "swap_text": _decode(pipe, z, hp, sp, ep, tb.context),
            "oracle_h": _decode(pipe, z, _norm_match(o_p, hp), sp, ep, tp.context),
            "oracle_h_b": _decode(pipe, z, _norm_match(o_b, hp), sp, ep, tp.context),
        }
        if ad is not None:
            one = torch.ones(len(part), 1)
            rows["adapter_oracle"] = ad.generate(tp, seeds, "adapter", o_p[:, None], one).images
            if teacher is not None:
                from toyworld.models.teacher import sample

                unc = pipe.encode_text([""]).context
                x0 = sample(teacher, tp.context, unc, pipe.initial_noise(seeds), teacher_steps, guidance)
                h_leak = ad.retrieval_features(x0, tp.context)
                rows["adapter_leak"] = ad.generate(tp, seeds, "adapter", h_leak[:, None], one).images
        for k, v in rows.items():
            imgs.setdefault(k, []).append(v)
    flat_p = [prompts[i] for i, _ in flat]
    flat_b = [other[i] for i, _ in flat]
    modes = list(imgs)
    stack = np.concatenate([np.concatenate(imgs[m]) for m in modes])
    vs_p = score_images(np.concatenate([stack]), flat_p * len(modes), workers)
    vs_b = score_images(stack, flat_b * len(modes), workers)
    L = len(flat)
    res: dict[str, Any] = {"model": str(model_dir), "n_prompts": n, "seeds_per_prompt": S,
                           "layout": {"down": list(pipe.unet.unet.config.down_block_types),
                                      "up": list(pipe.unet.unet.config.up_block_types)},
                           "modes": {}}
    for j, m in enumerate(modes):
        a = [r["overall"] for r in vs_p[j * L : (j + 1) * L]]
        b = [r["overall"] for r in vs_b[j * L : (j + 1) * L]]
        res["modes"][m] = {"vs_own": float(np.mean(a)), "vs_other": float(np.mean(b))}
    # scores of the two clean renders themselves (what "content moved to B" can reach)
    res["renders"] = {"own_vs_own": float(np.mean([r["overall"] for r in score_images(orc, prompts, workers)])),
                      "own_vs_other": float(np.mean([r["overall"] for r in score_images(orc, other, workers)]))}
    return res


def format_probe(res: dict[str, Any]) -> str:
    lines = [(f"model {res['model']} ({res['n_prompts']} prompts x {res['seeds_per_prompt']} seeds); "
              f"up blocks {res['layout']['up']}"),
             "| row | score vs own prompt | score vs other prompt |", "|---|---|---|"]
    for m, r in res["modes"].items():
        lines.append(f"| {m} | {100 * r['vs_own']:.1f} | {100 * r['vs_other']:.1f} |")
    r = res["renders"]
    lines.append(f"| (clean render of own prompt) | {100 * r['own_vs_own']:.1f} | {100 * r['own_vs_other']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """python -m lab.toyworld.probe MODEL_DIR [--n 200] [--adapter DIR] [--teacher-unet DIR] [--json OUT]"""
    import argparse

    from toyworld.models.data import eval_prompts

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--teacher-unet", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    p, _ = eval_prompts(a.n // 2, a.n - a.n // 2)
    res = probe(a.model, p, a.seeds, a.adapter, a.teacher_unet, a.device)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    print(format_probe(res))


if __name__ == "__main__":
    main()
