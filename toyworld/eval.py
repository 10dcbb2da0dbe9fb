"""Fidelity evaluation of the toy-world family: teacher, student, inject, adapter, control.

For every prompt and seed, each mode makes one 64x64 image and ``toyworld.checker``
scores it (fraction of the prompt's questions answered as the prompt states, overall
and per category). Modes:

* ``teacher``  — the multi-step teacher UNet, DDIM ``teacher_steps`` (25) with CFG;
* ``student``  — the one-step student, no retrieval;
* ``inject``   — the student + training-free slerp injection of the top-1 neighbour;
* ``adapter``  — the student + LoRA + H-adapter from the training job (retrieval on);
* ``control``  — the same job with retrieval off (λ = 0), run with the same retrieval.

Retrieval: exact cosine top-1 over the pooled text embeddings of the retrieval split
(``toyworld.models.adapter.RetrievalDB``, regenerated deterministically), with
H-features from each model's own UNet encoder and λ = the cosine score — the same
math as the service's Qdrant cosine search, without the index process. Realism: the
checker's clean-shape rate (clean components / foreground components). Latency:
median wall time of one batch-1 generation (text + UNet + VAE) per mode.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

MODES = ("teacher", "student", "inject", "adapter", "control")


@dataclass
class EvalModels:
    """Model dirs of one family: the student (plain), adapter and control runs, teacher UNet."""

    student: Path
    adapter: Path | None
    control: Path | None
    teacher_unet: Path | None

    @staticmethod
    def from_workdir(work: str | Path) -> EvalModels:
        w = Path(work)

        def opt(p: Path) -> Path | None:
            return p if p.exists() else None

        return EvalModels(w / "model", opt(w / "adapter_model"), opt(w / "control_model"), opt(w / "teacher" / "unet"))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _scores(images: np.ndarray, prompts: list[str]) -> list[dict[str, Any]]:
    from toyworld.checker import CATEGORIES, score
    from toyworld.detect import analyse

    out = []
    for im, p in zip(images, prompts, strict=True):
        r = score(im, p)
        a = analyse(im)
        out.append(
            {
                "overall": r.score,
                **{c: r.per_category[c] for c in CATEGORIES if c in r.per_category},
                "fg": a.foreground_components,
                "clean": a.clean_components,
            }
        )
    return out


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from toyworld.checker import CATEGORIES

    res: dict[str, Any] = {"n": len(rows), "overall": float(np.mean([r["overall"] for r in rows])) if rows else None}
    for c in CATEGORIES:
        vals = [r[c] for r in rows if c in r]
        res[c] = float(np.mean(vals)) if vals else None
    fg = sum(r["fg"] for r in rows)
    res["realism"] = float(sum(r["clean"] for r in rows) / fg) if fg else 0.0
    return res


def _retrieval_tensors(pipe: Any) -> dict[str, torch.Tensor]:
    """The weights that decide a pipe's retrieval features: text encoder, VAE, UNet minus decoder."""
    out = {f"te.{k}": v for k, v in pipe.text_encoder.state_dict().items()}
    out.update({f"vae.{k}": v for k, v in pipe.vae.state_dict().items()})
    out.update({f"unet.{k}": v for k, v in pipe.unet.unet.state_dict().items()
                if not k.startswith(("up_blocks.", "conv_norm_out.", "conv_out."))})
    return out


def _same_retrieval_path(a: Any, b: Any) -> bool:
    """True when two pipes compute identical retrieval H-features and text embeddings."""
    ta, tb = _retrieval_tensors(a), _retrieval_tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


class _Runner:
    """Generates images for one mode (batch) and times batch-1 calls."""

    def __init__(self, models: EvalModels, device: torch.device, n_retrieval: int, teacher_steps: int, guidance: float) -> None:
        from engines.pipeline import OneStepPipeline
        from toyworld.models.adapter import RetrievalDB

        self.device = device
        self.teacher_steps, self.guidance = teacher_steps, guidance
        self.pipes: dict[str, Any] = {"student": OneStepPipeline.from_pretrained(models.student, device=device)}
        if models.adapter is not None:
            self.pipes["adapter"] = OneStepPipeline.from_pretrained(models.adapter, device=device)
        if models.control is not None:
            self.pipes["control"] = OneStepPipeline.from_pretrained(models.control, device=device)
        self.teacher = None
        if models.teacher_unet is not None:
            from diffusers import UNet2DConditionModel

            self.teacher = UNet2DConditionModel.from_pretrained(str(models.teacher_unet), torch_dtype=torch.float32).to(device).eval()
        # One DB per distinct retrieval path (text encoder, VAE, UNet encoder): the training
        # job's LoRA touches only the up blocks, so the adapter/control exports normally share
        # the student's DB; sharing is decided by comparing the weights, so it stays exact.
        self.dbs: dict[str, Any] = {}
        for k, p in self.pipes.items():
            same = next((o for o in self.dbs if _same_retrieval_path(self.pipes[o], p)), None)
            self.dbs[k] = self.dbs[same] if same is not None else RetrievalDB.build(p, n_retrieval)

    def modes(self) -> list[str]:
        m = ["student", "inject"]
        if self.teacher is not None:
            m.insert(0, "teacher")
        m += [k for k in ("adapter", "control") if k in self.pipes]
        return m

    @torch.no_grad()
    def generate(self, mode: str, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, list[str]]:
        """-> images uint8 (B,64,64,3), top-1 neighbour captions ('' for no retrieval)."""
        from toyworld.models.teacher import sample

        key = mode if mode in ("adapter", "control") else "student"
        pipe = self.pipes[key]
        text = pipe.encode_text(prompts)
        if mode == "teacher":
            assert self.teacher is not None
            unc = pipe.encode_text([""]).context
            noise = pipe.initial_noise(seeds)
            x0 = sample(self.teacher, text.context, unc, noise, self.teacher_steps, self.guidance)
            return pipe.decode_latents(x0), [""] * len(prompts)
        if mode == "student":
            return pipe.generate(text, seeds, "off").images, [""] * len(prompts)
        db = self.dbs[key]
        h, lam, idx = db.neighbours(text.pooled, 1)
        m = "inject" if mode == "inject" else "adapter"
        out = pipe.generate(text, seeds, m, h, lam)
        return out.images, [db.captions[int(i)] for i in idx[:, 0]]

    def latency_ms(self, mode: str, prompt: str, reps: int = 7) -> float:
        self.generate(mode, [prompt], [0])
        ts = []
        for r in range(reps):
            _sync(self.device)
            t0 = time.perf_counter()
            self.generate(mode, [prompt], [r])
            _sync(self.device)
            ts.append((time.perf_counter() - t0) * 1e3)
        return float(statistics.median(ts))


def evaluate(
    prompts: list[str],
    models: EvalModels,
    long_tail: list[bool] | None = None,
    seeds_per_prompt: int = 2,
    device: str = "auto",
    n_retrieval: int = 10000,
    teacher_steps: int = 25,
    guidance: float = 3.0,
    batch: int = 256,
    keep_images: int = 0,
) -> dict[str, Any]:
    """-> {"modes": {mode: {overall, object, colour, count, relation, size, realism,
    latency_ms, common: {...}, long_tail: {...}}}, "n_prompts", ...}. ``long_tail`` defaults
    to ``toyworld.models.data.is_long_tail`` of each parsed prompt."""
    from toyworld.models.common import pick_device
    from toyworld.models.data import is_long_tail
    from toyworld.parse import parse

    if not prompts:
        raise ValueError("no prompts to evaluate")
    if long_tail is None:
        long_tail = [is_long_tail(parse(p)) for p in prompts]
    dev = pick_device(device)
    runner = _Runner(models, dev, n_retrieval, teacher_steps, guidance)
    flat_p = [p for p in prompts for _ in range(seeds_per_prompt)]
    flat_s = [1000 * i + j for i in range(len(prompts)) for j in range(seeds_per_prompt)]
    flat_t = [t for t in long_tail for _ in range(seeds_per_prompt)]
    result: dict[str, Any] = {"modes": {}, "n_prompts": len(prompts), "seeds_per_prompt": seeds_per_prompt,
                              "n_long_tail": int(sum(long_tail)), "n_retrieval": n_retrieval,
                              "teacher_steps": teacher_steps, "guidance": guidance, "device": str(dev)}
    samples: dict[str, Any] = {}
    for mode in runner.modes():
        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []
        neigh: list[str] = []
        for i in range(0, len(flat_p), batch):
            ims, nb = runner.generate(mode, flat_p[i : i + batch], flat_s[i : i + batch])
            rows += _scores(ims, flat_p[i : i + batch])
            neigh += nb
            if keep_images and mode not in samples:
                samples[mode] = ims[:keep_images]
        agg = _aggregate(rows)
        agg["common"] = _aggregate([r for r, t in zip(rows, flat_t, strict=True) if not t])
        agg["long_tail"] = _aggregate([r for r, t in zip(rows, flat_t, strict=True) if t])
        agg["latency_ms"] = runner.latency_ms(mode, prompts[0])
        agg["wall_s"] = round(time.perf_counter() - t0, 2)
        if mode in ("inject", "adapter", "control"):
            agg["neighbour_example"] = neigh[0]
        result["modes"][mode] = agg
        log.info("eval %s: overall %.3f (common %.3f, long tail %.3f), %.1f ms", mode, agg["overall"],
                 agg["common"]["overall"] or 0, agg["long_tail"]["overall"] or 0, agg["latency_ms"])
    if keep_images:
        result["_images"] = samples
    return result


def format_table(res: dict[str, Any]) -> str:
    """A markdown table like the paper's Table 2 (fidelity in points, 0-100)."""
    from toyworld.checker import CATEGORIES

    steps = {"teacher": str(res.get("teacher_steps", 25))}
    head = "| mode | steps | fidelity | common | long-tail | " + " | ".join(CATEGORIES) + " | realism | latency (ms) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m, r in res["modes"].items():

        def pct(v: float | None) -> str:
            return "–" if v is None else f"{100 * v:.1f}"

        cats = " | ".join(pct(r.get(c)) for c in CATEGORIES)
        lines.append(
            f"| {m} | {steps.get(m, '1')} | {pct(r['overall'])} | {pct(r['common']['overall'])} | "
            f"{pct(r['long_tail']['overall'])} | {cats} | {pct(r['realism'])} | {r['latency_ms']:.1f} |"
        )
    return "\n".join(lines)


def save_grid(
    prompts: list[str],
    models: EvalModels,
    out: str | Path,
    modes: tuple[str, ...] = ("teacher", "student", "adapter"),
    n_retrieval: int = 2000,
    device: str = "cpu",
    scale: int = 2,
) -> Path:
    """A PNG grid: one row per prompt (caption on the left), one column per mode, seed 0."""
    from PIL import Image, ImageDraw

    from toyworld.models.common import pick_device

    runner = _Runner(models, pick_device(device), n_retrieval, 25, 3.0)
    cols = [runner.generate(m, prompts, [0] * len(prompts))[0] for m in modes]
    s, text_w, head = 64 * scale, 330, 18
    img = Image.new("RGB", (text_w + s * len(modes), head + s * len(prompts)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for j, m in enumerate(modes):
        draw.text((text_w + j * s + 4, 3), m, fill=(0, 0, 0))
    for i, p in enumerate(prompts):
        words, lines, cur = p.split(), [], ""
        for w in words:
            if len(cur) + len(w) > 52:
                lines.append(cur)
                cur = ""
            cur = f"{cur} {w}".strip()
        lines.append(cur)
        for k, ln in enumerate(lines):
            draw.text((4, head + i * s + 4 + 12 * k), ln, fill=(0, 0, 0))
        for j in range(len(modes)):
            tile = Image.fromarray(cols[j][i]).resize((s, s), Image.NEAREST)
            img.paste(tile, (text_w + j * s, head + i * s))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
