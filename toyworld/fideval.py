"""The shipped model's fidelity evaluation: every mode, its controls, splits and paired intervals.

Modes (each one image per (prompt, seed), scored by ``toyworld.checker``):

* ``teacher``       — the multi-step teacher (DDIM ``teacher_steps``, CFG ``guidance``);
* ``student``       — the one-step student, no retrieval;
* ``inject``        — the student + training-free slerp injection of the top-1 neighbour;
* ``adapter``       — the shipped H-adapter + fine-tuned decoder, top-1 neighbour, λ = cosine;
* ``adapter_k4``    — the same model with the top-4 neighbours;
* ``control``       — the same training with λ = 0 (what the adapter gains by retrieval);
* ``shuffled_test`` — the adapter given another prompt's neighbour (true λ);
* ``oracle``        — the adapter given a clean render of the prompt itself (λ = 1).

Splits: ``common`` / ``seen_rare`` / ``held_out_rare`` (``toyworld.models.data.rare_group``)
and ``nb_full`` / ``nb_partial``: whether the top-1 neighbour's own image answers every
question of the prompt. Paired bootstrap 95 % intervals (prompts resampled) for the
differences of ``COMPARISONS``. Retrieval is exact cosine over the pooled text embeddings
of the retrieval split, H-features from the student's frozen encoder (the service's math);
the modes with real neighbours go through ``retrieval.compose.TextToImage``, the service's
own path; shuffled-at-test and oracle hand the adapter their features directly.

Models come from a work dir (``<work>/model`` = the student, ``<work>/<variant>_model``,
``<work>/teacher/unet``) or from the shipped assets (``toyworld/assets/model`` plus
``toyworld/assets/eval``: the teacher UNet and one safetensors file of decoder and
adapter weights per other variant), so a fresh clone can run it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.default_model import SHIPPED
from toyworld.models.variants import apply_variant, load_variant, save_variant, variant_state  # noqa: F401 (callers load and save variants through fideval)

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_EVAL = ASSETS / "eval"
VARIANTS = ("student", "adapter", "control")
ALL_MODES = ("teacher", "student", "inject", "adapter", "adapter_k4", "control", "shuffled_test", "oracle")
GROUPS = ("common", "seen_rare", "held_out_rare")
COMPARISONS = (
    ("adapter", "student"), ("adapter", "control"), ("control", "student"), ("shuffled_test", "control"),
    ("shuffled_test", "adapter"), ("adapter_k4", "control"), ("oracle", "control"), ("inject", "student"),
    ("teacher", "student"),
)


@dataclass
class Suite:
    """Pipelines of the variants that exist, the teacher UNet (or None), the shipped base."""

    pipes: dict[str, Any]
    teacher: torch.nn.Module | None
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_workdir(work: str | Path, device: torch.device) -> Suite:
        from engines.pipeline import OneStepPipeline

        w = Path(work)
        pipes = {"student": OneStepPipeline.from_pretrained(w / "model", device=device)}
        for v in VARIANTS[1:]:
            d = w / f"{v}_model"
            if d.is_dir():
                pipes[v] = OneStepPipeline.from_pretrained(d, device=device)
        return Suite(pipes, _teacher(w / "teacher" / "unet", device), str(w))

    @staticmethod
    def from_shipped(device: torch.device, model: Path | None = None, eval_dir: Path | None = None) -> Suite:
        """``toyworld/assets/model`` (whichever variant ships, named in its ragturbo.json
        ``variant``) + ``toyworld/assets/eval/<variant>.safetensors`` overrides + teacher."""
        from engines.pipeline import OneStepPipeline

        model = model or SHIPPED
        eval_dir = eval_dir or SHIPPED_EVAL
        meta = json.loads((model / "ragturbo.json").read_text())
        base_variant = str(meta.get("variant", "student"))
        pipes = {base_variant: OneStepPipeline.from_pretrained(model, device=device)}
        for v in VARIANTS:
            f = eval_dir / f"{v}.safetensors"
            if v != base_variant and f.is_file():
                p = OneStepPipeline.from_pretrained(model, device=device)
                apply_variant(p, f)
                pipes[v] = p
        return Suite(pipes, _teacher(eval_dir / "teacher_unet", device), f"{model} + {eval_dir}",
                     {"shipped_variant": base_variant})


def _teacher(path: Path, device: torch.device) -> torch.nn.Module | None:
    """The teacher UNet (fp32, eval mode) at ``path``, or None when there is none."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(path), torch_dtype=torch.float32).to(device).eval() if path.is_dir() else None


@dataclass
class Database:
    """Pairs in memory (by default the retrieval split): captions, images (N,64,64,3) or None,
    normalised pooled caption embeddings (N,D), H-features (N,C,h,w) and point ids."""

    captions: list[str]
    images: np.ndarray | None
    pooled: torch.Tensor
    features: torch.Tensor
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = self.ids or [f"retrieval-{i}" for i in range(len(self.captions))]

    @staticmethod
    def build(pipe: Any, n: int, batch: int = 512) -> Database:
        """Regenerate items 0..n-1 of the retrieval split; pooled embeddings and H-features
        (the student's encoder at t = 0) computed with ``pipe``."""
        from toyworld.models.data import make_split

        sp = make_split("retrieval", n)
        assert sp.images is not None
        return Database(sp.captions, sp.images, *Database.encode(pipe, sp.images, sp.captions, batch))

    @staticmethod
    def encode(pipe: Any, images: np.ndarray, captions: list[str], batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs -> (normalised pooled caption embeddings (N,D), H-features (N,C,h,w)) on ``pipe``'s device."""
        pooled, feats = [], []
        for i in range(0, len(captions), batch):
            te = pipe.encode_text(captions[i : i + batch])
            lat = pipe.encode_images(images[i : i + batch])
            feats.append(pipe.retrieval_features(lat, te.context).float())
            pooled.append(torch.nn.functional.normalize(te.pooled.float(), dim=-1))
        return torch.cat(pooled), torch.cat(feats)

    def as_retrieval_db(self) -> Any:
        """The pairs as a ``retrieval.db.RetrievalDB`` (exact cosine in memory, on the device
        they live on), what ``retrieval.compose.TextToImage`` (the service's path) searches."""
        from retrieval.db import RetrievalDB
        from retrieval.memory_index import MemoryFeatures, MemoryIndex

        index = MemoryIndex.from_vectors(self.ids, self.pooled, [{"caption": c} for c in self.captions],
                                         device=self.pooled.device, unit=True)
        return RetrievalDB(index, MemoryFeatures(self.ids, self.features))

    def search(self, pooled: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled (B,D) -> (λ by ``engines.rules.neighbour_lambda`` (B,k), indices (B,k))."""
        from engines.rules import neighbour_lambda

        s, i = (self._unit(pooled) @ self.pooled.T).topk(k, dim=1)
        return neighbour_lambda(s), i

    def _unit(self, pooled: torch.Tensor) -> torch.Tensor:
        """Prompts' pooled embeddings, normalised, on the database's device."""
        return torch.nn.functional.normalize(pooled.float().to(self.pooled.device), dim=-1)


def oracle_images(prompts: list[str], seed: int = 7) -> np.ndarray:
    """A clean render (N,64,64,3) of each prompt (its stated spec, a seeded layout)."""
    from toyworld.parse import parse
    from toyworld.render import render
    from toyworld.scene import layout

    return np.stack([render(layout(parse(p), np.random.default_rng([seed, i]))) for i, p in enumerate(prompts)])


@torch.no_grad()
def _teacher_latents(suite: Suite, pipe: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> torch.Tensor:
    from toyworld.models.teacher import sample

    assert suite.teacher is not None
    text = pipe.encode_text(prompts)
    unc = pipe.encode_text([""]).context
    return sample(suite.teacher, text.context, unc, pipe.initial_noise(seeds), steps, guidance)


def compose_images(t2i: Any, prompts: list[str], seeds: list[int], mode: str, k: int = 1,
                   top_ids: list[str] | None = None) -> np.ndarray:
    """uint8 images (B,H,W,3) through ``retrieval.compose.TextToImage.generate`` (embed → search
    → gather → λ → generate: the one path the service and the CLI run); raises when retrieval
    did not answer, so an eval never quietly falls back to no retrieval. ``top_ids`` (a list)
    receives each image's top-1 neighbour id ("" for none)."""
    from retrieval.compose import ImageRequest

    res, _ = t2i.generate([ImageRequest(prompt=p, seed=s, mode=mode, k=k) for p, s in zip(prompts, seeds, strict=True)])  # type: ignore[arg-type]
    if mode != "off" and any(r.retrieval_status not in ("ok", "weak") for r in res):
        raise RuntimeError(f"eval {mode}: retrieval did not answer ({[r.retrieval_status for r in res]})")
    if top_ids is not None:
        top_ids.extend(r.retrieved[0].id if r.retrieved else "" for r in res)
    return np.stack([r.image for r in res])


def evaluate(
    prompts: list[str],
    suite: Suite,
    seeds_per_prompt: int = 4,
    n_retrieval: int = 10000,
    teacher_steps: int = 25,
    guidance: float = 3.0,
    batch: int = 512,
    modes: tuple[str, ...] | None = None,
    workers: int | None = None,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """-> {"modes": {mode: {overall, categories, realism, common, seen_rare, held_out_rare,
    nb_full, nb_partial, wall_s}}, "comparisons": {"a-b": {split: {diff, lo, hi, n}}}, ...}."""
    from toyworld.models.data import rare_group
    from toyworld.parse import parse
    from toyworld.scoring import aggregate, score_images

    if not prompts:
        raise ValueError("no prompts to evaluate")
    base = suite.pipes.get("student") or next(iter(suite.pipes.values()))
    dev = base.device
    t_db = time.perf_counter()
    db = Database.build(base, n_retrieval)
    db_s = time.perf_counter() - t_db
    from retrieval.compose import TextToImage

    # every variant shares the student's text encoder, VAE and UNet encoder, so one database
    # (features from the student's encoder) serves them all; no search deadline in an eval
    rdb = db.as_retrieval_db()
    t2i = {k: TextToImage(p, rdb, retrieval_timeout_s=None) for k, p in suite.pipes.items()}
    S = seeds_per_prompt
    flat_p = [p for p in prompts for _ in range(S)]
    flat_s = [1000 * i + j for i in range(len(prompts)) for j in range(S)]
    groups = [rare_group(parse(p)) for p in prompts]
    text_all = base.encode_text(prompts)
    lam4, idx4 = db.search(text_all.pooled, 4)
    # does the top-1 neighbour's own image answer every question of the prompt?
    assert db.images is not None
    nb_rows = score_images(db.images[idx4[:, 0].cpu().numpy()], prompts, workers)
    nb_full = [r["overall"] >= 1.0 - 1e-9 for r in nb_rows]
    orc_img = oracle_images(prompts)
    orc_lat = base.encode_images(orc_img)
    orc_h = base.retrieval_features(orc_lat, text_all.context).float()

    unknown = [m for m in modes or () if m not in ALL_MODES]
    if unknown:
        raise ValueError(f"unknown eval mode(s) {unknown}; choose from {ALL_MODES}")
    want = [m for m in (modes or ALL_MODES) if _available(suite)[m]]
    images: dict[str, list[np.ndarray]] = {m: [] for m in want}
    walls: dict[str, float] = dict.fromkeys(want, 0.0)
    P = len(prompts)
    for lo in range(0, len(flat_p), batch):
        hi = min(len(flat_p), lo + batch)
        pi = torch.as_tensor([i // S for i in range(lo, hi)], device=lam4.device)
        b = _Batch(flat_p[lo:hi], flat_s[lo:hi], base.encode_text(flat_p[lo:hi]), pi, (pi + 1) % P)
        for m in want:
            t0 = time.perf_counter()
            images[m].append(_mode_images(m, b, suite, base, t2i, db, lam4, idx4, orc_h, teacher_steps, guidance))
            walls[m] += time.perf_counter() - t0
    t_sc = time.perf_counter()
    all_imgs = np.concatenate([np.concatenate(images[m]) for m in want])
    rows_all = score_images(all_imgs, flat_p * len(want), workers)
    score_s = time.perf_counter() - t_sc
    rows = {m: rows_all[j * len(flat_p) : (j + 1) * len(flat_p)] for j, m in enumerate(want)}
    res: dict[str, Any] = {
        "modes": {}, "comparisons": {}, "n_prompts": P, "seeds_per_prompt": S, "n_retrieval": n_retrieval,
        "teacher_steps": teacher_steps, "guidance": guidance, "device": str(dev),
        "n_per_group": {g: int(sum(x == g for x in groups)) for g in GROUPS},
        "n_nb_full": int(sum(nb_full)), "source": suite.source, **suite.meta,
        "neighbour_image": {"overall": aggregate(nb_rows)["overall"],
                            **{g: aggregate([r for r, x in zip(nb_rows, groups, strict=True) if x == g])["overall"] for g in GROUPS}},
        "db_build_s": round(db_s, 1), "score_s": round(score_s, 1),
    }
    res["modes"] = {m: {**_split_scores(rows[m], groups, nb_full, S), "wall_s": round(walls[m], 2)} for m in want}
    res["comparisons"] = _comparisons(rows, groups, nb_full, S, n_boot)
    return res


def _available(suite: Suite) -> dict[str, bool]:
    """Which modes ``suite`` can run (each needs its variant; ``teacher`` the teacher UNet)."""
    has = suite.pipes.__contains__
    return {"teacher": suite.teacher is not None, "student": has("student"), "inject": has("student"),
            "adapter": has("adapter"), "adapter_k4": has("adapter"), "control": has("control"),
            "shuffled_test": has("adapter"), "oracle": has("adapter")}


@dataclass
class _Batch:
    """One batch of (prompt, seed) rows: prompts, seeds, their text encoding, each row's prompt
    index and the index of the prompt whose neighbour the shuffled modes hand it."""

    prompts: list[str]
    seeds: list[int]
    text: Any
    pi: torch.Tensor
    pi_shuf: torch.Tensor


_COMPOSED = {"student": ("student", "off", 1), "inject": ("student", "inject", 1), "adapter": ("adapter", "adapter", 1),
             "adapter_k4": ("adapter", "adapter", 4), "control": ("control", "adapter", 1)}
"""Modes with real neighbours: (variant, retrieval mode, k) through ``retrieval.compose``."""


def _mode_images(m: str, b: _Batch, suite: Suite, base: Any, t2i: dict[str, Any], db: Database,
                 lam4: torch.Tensor, idx4: torch.Tensor, orc_h: torch.Tensor, teacher_steps: int,
                 guidance: float) -> np.ndarray:
    """uint8 images of mode ``m`` for batch ``b``."""
    if m in _COMPOSED:
        variant, mode, k = _COMPOSED[m]
        return compose_images(t2i[variant], b.prompts, b.seeds, mode, k)
    if m == "teacher":
        return base.decode_latents(_teacher_latents(suite, base, b.prompts, b.seeds, teacher_steps, guidance))
    adapter = suite.pipes["adapter"]
    n = len(b.prompts)
    if m == "oracle":
        return adapter.generate(b.text, b.seeds, "adapter", orc_h[b.pi.to(orc_h.device)][:, None], torch.ones(n, 1)).images
    if m == "shuffled_test":  # another prompt's neighbour, true λ
        h = db.features[idx4[b.pi_shuf, :1].to(db.features.device)]
        return adapter.generate(b.text, b.seeds, "adapter", h, lam4[b.pi, :1]).images
    raise ValueError(f"unknown eval mode {m!r}; choose from {ALL_MODES}")


def _split_scores(r: list[dict[str, Any]], groups: list[str], nb_full: list[bool], S: int) -> dict[str, Any]:
    """Aggregate checker rows of one mode overall, per group and by neighbour-image fit."""
    from toyworld.scoring import aggregate

    flat_g = [g for g in groups for _ in range(S)]
    flat_nb = [f for f in nb_full for _ in range(S)]
    agg = aggregate(r)
    for g in GROUPS:
        agg[g] = aggregate([x for x, gg in zip(r, flat_g, strict=True) if gg == g])
    agg["nb_full"] = aggregate([x for x, f in zip(r, flat_nb, strict=True) if f])
    agg["nb_partial"] = aggregate([x for x, f in zip(r, flat_nb, strict=True) if not f])
    return agg


def _comparisons(rows: dict[str, list[dict[str, Any]]], groups: list[str], nb_full: list[bool], S: int,
                 n_boot: int) -> dict[str, Any]:
    """Paired bootstrap intervals (prompts resampled) of ``COMPARISONS`` over every split."""
    from toyworld.scoring import paired_bootstrap, per_prompt

    pp = {m: per_prompt([x["overall"] for x in r], S) for m, r in rows.items()}
    masks = {"overall": np.ones(len(groups), bool), **{g: np.array([x == g for x in groups]) for g in GROUPS},
             "nb_full": np.array(nb_full), "nb_partial": ~np.array(nb_full)}
    return {f"{a}-{b}": {s: paired_bootstrap(pp[a][mk], pp[b][mk], n_boot) for s, mk in masks.items() if mk.any()}
            for a, b in COMPARISONS if a in pp and b in pp}


def format_table(res: dict[str, Any]) -> str:
    """Markdown: one row per mode (fidelity in points), then the paired differences."""
    from toyworld.checker import CATEGORIES

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    head = ("| mode | steps | fidelity | common | seen-rare | held-out-rare | nb full | nb partial | "
            + " | ".join(CATEGORIES) + " | realism |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m, r in res["modes"].items():
        steps = str(res.get("teacher_steps", 25)) if m == "teacher" else "1"
        cats = " | ".join(pct(r.get(c)) for c in CATEGORIES)
        lines.append(f"| {m} | {steps} | {pct(r['overall'])} | {pct(r['common']['overall'])} | "
                     f"{pct(r['seen_rare']['overall'])} | {pct(r['held_out_rare']['overall'])} | "
                     f"{pct(r['nb_full']['overall'])} | {pct(r['nb_partial']['overall'])} | {cats} | {pct(r['realism'])} |")
    if res.get("comparisons"):
        lines += ["", "| difference (points, 95% paired bootstrap CI) | overall | common | seen-rare | held-out-rare |",
                  "|---|---|---|---|---|"]
        for k, v in res["comparisons"].items():
            cells = []
            for s in ("overall", *GROUPS):
                c = v.get(s)
                cells.append("–" if c is None else f"{100 * c['diff']:+.1f} [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
