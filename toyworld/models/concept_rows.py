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

from toyworld.concepts import SET_A, Item, caption_for, pseudo_word, render_items
from toyworld.vocab import COLOURS, IMAGE_SIZE, PLAIN_BACKGROUND, SHAPE_PLURALS, SHAPES, SIZES

log = logging.getLogger(__name__)

POOL_SEED = 7_000_000
ROW_NOISE_SEED = 2_000_000
"""First noise seed of a row (row i: + i); clear of the eval seeds (1000·i + j, i < 1000)."""


@dataclass
class Rows:
    captions: list[str]
    kinds: list[str]
    seeds: list[int]
    images: np.ndarray  # targets (N, 64, 64, 3)
    nb_index: np.ndarray  # into the neighbour bank (N,)


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


def neighbour_pool(n_per: int, seed: int = POOL_SEED) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Single-object pairs of every known and set-A shape in every colour: images, captions,
    shape and colour of each (the concept rows' neighbours)."""
    ims, caps, shp, col = [], [], [], []
    for k, s in enumerate((*SHAPES, *SET_A)):
        for c_i, c in enumerate(COLOURS):
            for i in range(n_per):
                rng = np.random.default_rng([seed, k, c_i, i])
                from toyworld.concepts import sample_item

                it = sample_item(s, rng, c)
                bg = str(rng.choice(["black", "gray", "brown", "navy"])) if rng.random() < 0.5 else PLAIN_BACKGROUND
                ims.append(render_items([it], bg))
                caps.append(caption_for(s, c, None, bg if rng.random() < 0.7 else None, int(rng.integers(3))))
                shp.append(s)
                col.append(c)
    return np.stack(ims), caps, shp, col


def build_rows(pipe: Any, n: int, start: int, frac_concept: float, frac_dropout: float,
               pool: tuple[np.ndarray, list[str], list[str], list[str]], seed: int = 0,
               batch: int = 256) -> tuple[Rows, dict[str, int]]:
    """Up to ``n`` rows from adapter-split items ``start``..; returns the rows and counts."""
    from toyworld.detect import analyse
    from toyworld.models.data import make_split

    sp = make_split("adapter", n, start=start, images=False)
    rng = np.random.default_rng([seed, 31, start])
    _, _, p_shape, p_col = pool
    by = {}
    for i, (s, c) in enumerate(zip(p_shape, p_col, strict=True)):
        by.setdefault((s, c), []).append(i)
    caps, kinds, seeds, ims, nb = [], [], [], [], []
    counts = {"plain": 0, "concept": 0, "dropout": 0, "dropped": 0}
    for lo in range(0, n, batch):
        cs = sp.captions[lo : lo + batch]
        ss = [ROW_NOISE_SEED + start + lo + j for j in range(len(cs))]
        with torch.no_grad():
            out = pipe.generate(pipe.encode_text(cs), ss, "off").images
        for j, (cap, spec, img) in enumerate(zip(cs, sp.specs[lo : lo + batch], out, strict=True)):
            an = analyse(img)
            pos = _layout(spec, an)
            if pos is None:
                counts["dropped"] += 1
                continue
            shapes = [spec.objects[0].shape] * len(pos) if spec.kind == "group" else [o.shape for o in spec.objects]
            u = rng.random()
            kind = "concept" if u < frac_concept else ("dropout" if u < frac_concept + frac_dropout else "plain")
            nb_i = -1
            if kind != "plain":
                oj = int(rng.integers(len(spec.objects)))
                old = spec.objects[oj].shape
                new = str(rng.choice(SET_A)) if kind == "concept" else old
                cap = hide_shape(cap, old, pseudo_word(rng))
                shapes = [new if s == old else s for s in shapes]
                colour = spec.objects[oj].colour if rng.random() < 0.7 else str(rng.choice(list(COLOURS)))
                cand = by[(new, colour)]
                nb_i = int(cand[rng.integers(len(cand))])
            items = _items(spec, pos, shapes, rng)
            bg = spec.background or (an.background or PLAIN_BACKGROUND)
            caps.append(cap)
            kinds.append(kind)
            seeds.append(ss[j])
            ims.append(render_items(items, bg))
            nb.append(nb_i)
            counts[kind] += 1
    return Rows(caps, kinds, seeds, np.stack(ims), np.asarray(nb)), counts


@torch.no_grad()
def arm_data(pipe: Any, rows: Rows, pool: tuple[np.ndarray, list[str], list[str], list[str]], db: Any,
             batch: int = 256) -> Any:
    """``training.regression.Rows`` of the rows: noise, target latents, context, neighbour
    H and λ (plain rows: top-1 of ``db`` (``toyworld.fideval.Database``); others: the pool pair)."""
    from engines.rules import neighbour_lambda
    from training.regression import Rows

    p_img, p_cap, _, _ = pool
    pt = pipe.encode_text(p_cap)
    p_h = torch.cat([pipe.retrieval_features(pipe.encode_images(p_img[i : i + batch]), pt.context[i : i + batch]).float()
                     for i in range(0, len(p_cap), batch)])
    p_pool = torch.nn.functional.normalize(pt.pooled.float(), dim=-1)
    noise, tgt, ctx, h_nb, lam = [], [], [], [], []
    for lo in range(0, len(rows.captions), batch):
        sl = slice(lo, lo + batch)
        te = pipe.encode_text(rows.captions[sl])
        q = torch.nn.functional.normalize(te.pooled.float(), dim=-1)
        lam_db, idx = db.search(te.pooled, 1)
        nbi = torch.as_tensor(rows.nb_index[sl])
        use_pool = nbi >= 0
        h = db.features[idx[:, 0].to(db.features.device)].float().cpu()
        h[use_pool] = p_h[nbi[use_pool]]
        lam_b = lam_db[:, 0].float().cpu()
        lam_b[use_pool] = neighbour_lambda((q[use_pool] * p_pool[nbi[use_pool]]).sum(-1)).float()
        noise.append(pipe.initial_noise(rows.seeds[sl]).float().cpu())
        tgt.append(pipe.encode_images(rows.images[sl]).float().cpu())
        ctx.append(te.context.float().cpu())
        h_nb.append(h)
        lam.append(lam_b)
    return Rows(torch.cat(noise), torch.cat(tgt), torch.cat(ctx), torch.cat(h_nb), torch.cat(lam))
