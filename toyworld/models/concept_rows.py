"""Adapter-training rows for concept dropout: the text cannot say it, the neighbour shows it.

Each row starts from an adapter-split caption and a noise seed. The layout comes from the
model's own one-step sample from that noise (retrieval off), read back by the checker's
detector (``toyworld.detect.analyse``): the object centres and sizes the noise leads to.
The target is that layout re-rendered cleanly with every attribute the caption states
(shape, colour, count, relation, size and the named background), so the regression target
is well posed for a one-step model: where things go is the noise's, what they are is the
caption's (or, below, the neighbour's). Rows whose sample does not show the caption's
object count are dropped.

Row kinds:

* ``plain``   — the caption as is; neighbour: the top-1 pair of the retrieval split (real
  cosine search over pooled text embeddings), λ = its score;
* ``concept`` — one object's shape is replaced by a set-A shape (``toyworld.concepts.SET_A``)
  and its shape word in the caption by a made-up word (``pseudo_word``, fresh each row, so
  no word is ever learned for it); the neighbour is a pool pair that shows that shape
  (mostly in the object's colour), λ = the cosine of the two captions;
* ``dropout`` — the same for a known shape: the word is hidden, the shape stays, the
  neighbour shows it. It teaches the general skill "draw what the text does not say from
  the neighbour" on shapes the model knows, so it can transfer to shapes it has never drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from toyworld.concepts import RANDOM_PREFIX, SET_A, Item, caption_for, pseudo_word, render_items
from toyworld.vocab import COLOURS, IMAGE_SIZE, PLAIN_BACKGROUND, SHAPE_PLURALS, SIZES

log = logging.getLogger(__name__)

ROW_NOISE_SEED = 2_000_000
"""First noise seed of a row (row i: + i); clear of the eval seeds (1000·i + j, i < 1000)."""


@dataclass
class Rows:
    captions: list[str]
    kinds: list[str]
    seeds: list[int]
    images: np.ndarray  # targets (N, 64, 64, 3)
    nb_images: np.ndarray  # the neighbour each concept/dropout row is given (N, 64, 64, 3); zeros for plain rows
    nb_captions: list[str]  # its caption ("" for plain rows)


def _layout(spec: Any, analysis: Any) -> list[tuple[float, float, float]] | None:
    """(x, y, extent) per drawn object of ``spec`` from the detected blobs, or None."""
    n = spec.count if spec.kind == "group" else (2 if spec.kind == "relation" else 1)
    blobs = sorted(analysis.blobs, key=lambda b: -b.area)[:n]
    if len(blobs) < n:
        return None
    pos = [(b.cx, b.cy, float(b.extent)) for b in blobs]
    if spec.kind == "relation":
        axis, first = {"left of": (0, True), "right of": (0, False), "above": (1, True), "below": (1, False)}[spec.relation]
        pos.sort(key=lambda p: p[axis], reverse=not first)  # the subject is objects[0]
    return pos


def _extent(stated: str | None, detected: float, rng: np.random.Generator) -> float:
    size = stated or ("big" if detected >= 16.5 else "small")
    lo, hi = SIZES[size]
    return float(np.clip(detected, lo, hi)) if stated is None else float(rng.uniform(lo, hi))


def _items(spec: Any, pos: list[tuple[float, float, float]], shapes: list[str], rng: np.random.Generator) -> list[Item]:
    items = []
    objs = [spec.objects[0]] * len(pos) if spec.kind == "group" else list(spec.objects)
    ext0 = None
    for j, ((x, y, e), o) in enumerate(zip(pos, objs, strict=True)):
        ext = _extent(o.size, e, rng) if (spec.kind != "group" or ext0 is None) else ext0
        ext0 = ext
        r = ext / 2 + 3
        items.append(Item(shapes[j], o.colour, float(np.clip(x, r, IMAGE_SIZE - r)), float(np.clip(y, r, IMAGE_SIZE - r)), ext))
    return items


def hide_shape(caption: str, shape: str, word: str) -> str:
    """``caption`` with its word for ``shape`` (singular or plural) replaced by ``word``."""
    out = []
    for w in caption.split(" "):
        out.append(word if w == shape else (word + "s" if w == SHAPE_PLURALS[shape] else w))
    text = " ".join(out)
    if text == caption:
        raise ValueError(f"caption {caption!r} has no word for {shape!r}")
    return text


@dataclass(frozen=True)
class RowOptions:
    """How concept/dropout rows are made. ``frac_random``: of the concept rows, the fraction whose
    shape is a random silhouette (``toyworld.concepts.random_shape_mask``) rather than a set-A
    shape; ``copy_layout``: single-object concept/dropout rows take the neighbour's position and
    size (the model learns to draw the neighbour's object in the caption's colour), instead of
    the layout the noise leads to."""

    frac_concept: float = 0.3
    frac_dropout: float = 0.25
    frac_random: float = 0.0
    copy_layout: bool = False


def _neighbour(shape: str, colour: str, word: str, size: str | None, rng: np.random.Generator) -> tuple[Item, str, str]:
    """A pair that shows ``shape``: its item, background and caption (the shape named ``word``)."""
    from toyworld.concepts import sample_item

    it = sample_item(shape, rng, colour)
    if size is not None:
        lo, hi = SIZES[size]
        it = Item(it.shape, it.colour, it.x, it.y, float(rng.uniform(lo, hi)))
    bg = str(rng.choice(["black", "gray", "brown", "navy"])) if rng.random() < 0.5 else PLAIN_BACKGROUND
    cap = caption_for("XSHAPEX", colour, size if rng.random() < 0.5 else None,
                      bg if rng.random() < 0.7 else None, int(rng.integers(3))).replace("XSHAPEX", word)
    return it, bg, cap


def make_row(cap: str, spec: Any, sample: np.ndarray, row_seed: int, opt: RowOptions) -> tuple[str, str, np.ndarray, np.ndarray | None, str] | None:
    """One row from a caption, its spec and the model's one-step sample of the row's noise:
    (caption, kind, target image, neighbour image or None, neighbour caption), or None when the
    sample lacks the caption's object count. A pure function of its arguments."""
    from toyworld.detect import analyse

    rng = np.random.default_rng([row_seed, 31])
    an = analyse(sample)
    pos = _layout(spec, an)
    if pos is None:
        return None
    shapes = [spec.objects[0].shape] * len(pos) if spec.kind == "group" else [o.shape for o in spec.objects]
    u = rng.random()
    kind = "concept" if u < opt.frac_concept else ("dropout" if u < opt.frac_concept + opt.frac_dropout else "plain")
    bg = spec.background or (an.background or PLAIN_BACKGROUND)
    if kind == "plain":
        return cap, kind, render_items(_items(spec, pos, shapes, rng), bg), None, ""
    oj = int(rng.integers(len(spec.objects)))
    obj = spec.objects[oj]
    if kind == "dropout":
        new = obj.shape
    elif rng.random() < opt.frac_random:
        new = f"{RANDOM_PREFIX}{int(rng.integers(1 << 30))}"
    else:
        new = str(rng.choice(SET_A))
    word = pseudo_word(rng)
    cap = hide_shape(cap, obj.shape, word)
    colour = obj.colour if rng.random() < 0.7 else str(rng.choice(list(COLOURS)))
    nb_item, nb_bg, nb_cap = _neighbour(new, colour, word, obj.size, rng)
    if opt.copy_layout and spec.kind == "single":
        items = [Item(new, obj.colour, nb_item.x, nb_item.y, nb_item.extent)]
        bg = spec.background or nb_bg
    else:
        items = _items(spec, pos, [new if s == obj.shape else s for s in shapes], rng)
    return cap, kind, render_items(items, bg), render_items([nb_item], nb_bg), nb_cap


def _make_rows(args: tuple[Any, ...]) -> Any:
    return make_row(*args)


def build_rows(pipe: Any, n: int, start: int, opt: RowOptions, seed: int = 0, batch: int = 256,
               workers: int = 0) -> tuple[Rows, dict[str, int]]:
    """Up to ``n`` rows from adapter-split items ``start``..; returns the rows and counts.
    ``workers`` > 1 makes the rows (detector + renders) in that many processes."""
    from toyworld.models.data import make_split

    sp = make_split("adapter", n, start=start, images=False)
    caps, kinds, seeds, ims, nb_ims, nb_caps = [], [], [], [], [], []
    counts = {"plain": 0, "concept": 0, "dropout": 0, "dropped": 0}
    blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)
    try:
        for lo in range(0, n, batch):
            cs = sp.captions[lo : lo + batch]
            ss = [ROW_NOISE_SEED + start + lo + j for j in range(len(cs))]
            with torch.no_grad():
                out = pipe.generate(pipe.encode_text(cs), ss, "off").images
            args = [(c, spec, img, seed * 1_000_003 + s, opt) for c, spec, img, s in zip(cs, sp.specs[lo : lo + batch], out, ss, strict=True)]
            made = pool.map(_make_rows, args, chunksize=8) if pool is not None else [make_row(*a) for a in args]
            for s_j, r in zip(ss, made, strict=True):
                if r is None:
                    counts["dropped"] += 1
                    continue
                caps.append(r[0])
                kinds.append(r[1])
                seeds.append(s_j)
                ims.append(r[2])
                nb_ims.append(blank if r[3] is None else r[3])
                nb_caps.append(r[4])
                counts[r[1]] += 1
            log.info("rows %d/%d: %s", min(lo + batch, n), n, counts)
    finally:
        if pool is not None:
            pool.close()
    return Rows(caps, kinds, seeds, np.stack(ims), np.stack(nb_ims), nb_caps), counts


@torch.no_grad()
def arm_data(pipe: Any, rows: Rows, db: Any, batch: int = 256) -> Any:
    """``training.regression.Rows`` of the rows: noise, target latents, context, neighbour
    H and λ (plain rows: top-1 of ``db`` (``toyworld.fideval.Database``); others: the row's
    own neighbour, λ by ``engines.rules.neighbour_lambda`` of the two captions' cosine)."""
    from engines.rules import neighbour_lambda
    from training.regression import Rows as TrainRows

    noise, tgt, ctx, h_nb, lam = [], [], [], [], []
    for lo in range(0, len(rows.captions), batch):
        sl = slice(lo, lo + batch)
        te = pipe.encode_text(rows.captions[sl])
        lam_db, idx = db.search(te.pooled, 1)
        h = db.features[idx[:, 0].to(db.features.device)].float()
        lam_b = lam_db[:, 0].float().to(h.device)
        own = torch.as_tensor([k != "plain" for k in rows.kinds[sl]], device=h.device)
        if bool(own.any()):
            j = own.nonzero()[:, 0].cpu()
            nb_caps = [rows.nb_captions[lo + int(i)] for i in j]
            nt = pipe.encode_text(nb_caps)
            nh = pipe.retrieval_features(pipe.encode_images(rows.nb_images[sl][j.numpy()]), nt.context).float()
            q = torch.nn.functional.normalize(te.pooled.float()[j.to(te.pooled.device)], dim=-1)
            k = torch.nn.functional.normalize(nt.pooled.float(), dim=-1)
            h[j.to(h.device)] = nh.to(h.device)
            lam_b[j.to(h.device)] = neighbour_lambda((q * k).sum(-1)).float().to(h.device)
        noise.append(pipe.initial_noise(rows.seeds[sl]).float().cpu())
        tgt.append(pipe.encode_images(rows.images[sl]).float().cpu())
        ctx.append(te.context.float().cpu())
        h_nb.append(h.cpu())
        lam.append(lam_b.cpu())
    return TrainRows(torch.cat(noise), torch.cat(tgt), torch.cat(ctx), torch.cat(h_nb), torch.cat(lam))
