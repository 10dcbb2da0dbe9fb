"""Building the retrieval split's pairs from the generator (the exact build).

One worker process per usable CPU, one torch thread each: a worker renders a chunk, writes
its PNGs and computes what ``retrieval.ingest.ingest`` stores for those files (point ids,
text-encoder vectors once per distinct caption, VAE latents, H-features at t = 0), so no PNG
is decoded again; the main process writes the chunks in order (a resumed build skips what is
stored). On a CPU with native bf16 the VAE encoder runs under bf16 autocast (``vae="auto"``);
the index vectors stay fp32. glibc is told to keep freed memory (``keep_freed_memory``).
Measurements against ``ingest``: docs/toyworld.md, "First start".
"""

from __future__ import annotations

import ctypes
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

STAMP = "toyworld-db.json"
RENDER_CHUNK = 250
"""Items rendered, written and encoded per worker task (small enough for a smooth progress bar)."""
ENCODE_BATCH = 32
"""Encoder batch in a worker: at one thread 32 beat 64 and 128 here (cache-sized activations)."""
VaePrecision = Literal["auto", "bf16", "fp32"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
_PIPE: Any = None  # the worker's OneStepPipeline (set by _init_worker)


def keep_freed_memory() -> bool:
    """Ask glibc to serve allocations up to 32 MiB from the heap and never trim it.

    Torch frees each batch's activations and allocates the next batch's; by default
    those blocks are ``mmap``ed and unmapped every time (~2000 page faults a pair here).
    Process-wide and harmless for a one-shot build; a no-op off glibc. Returns whether
    it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    except (OSError, AttributeError):
        return False
    return ok


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (``cpu.max``, what a Kubernetes CPU limit sets), so a pod limited to 1 CPU on a
    64-core node does not start 8 workers."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (else bf16 autocast is emulated
    and slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_vae_precision(vae: VaePrecision) -> Literal["bf16", "fp32"]:
    if vae not in ("auto", "bf16", "fp32"):
        raise ValueError(f"vae precision must be auto, bf16 or fp32; got {vae!r}")
    if vae == "auto":
        return "bf16" if native_bf16() else "fp32"
    return vae


def _render(folder: Path, lo: int, hi: int) -> tuple[list[np.ndarray], list[str], list[bytes]]:
    """Items lo..hi-1 of the retrieval split: images (64,64,3) uint8, captions, and the PNG
    bytes, which are also written to ``folder/NNNNNN.png``."""
    from PIL import Image

    from toyworld.models.data import split_item
    from toyworld.render import render

    imgs, caps, pngs = [], [], []
    for i in range(lo, hi):
        scene, cap, _ = split_item("retrieval", i)
        img = render(scene)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
        data = buf.getvalue()
        (folder / f"{i:06d}.png").write_bytes(data)
        imgs.append(img), caps.append(cap), pngs.append(data)
    return imgs, caps, pngs


def _render_chunk(args: tuple[Path, int, int]) -> list[str]:
    """Worker: render and write items lo..hi-1, return their captions."""
    return _render(*args)[1]


def write_retrieval_folder(folder: Path, n: int, workers: int | None = None, progress: bool = True) -> Path:
    """Items 0..n-1 of the retrieval split as PNGs + ``captions.jsonl`` (written last; the
    ingest format), the images of ``make_split("retrieval", n)`` without holding them in memory."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(folder, lo, min(n, lo + RENDER_CHUNK)) for lo in range(0, n, RENDER_CHUNK)]
    caps: list[str] = []
    with tqdm(total=n, unit="img", desc="render", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with get_context("fork").Pool(workers) as pool:
                for part in pool.imap(_render_chunk, jobs):
                    caps += part
                    bar.update(len(part))
        else:
            for job in jobs:
                part = _render_chunk(job)
                caps += part
                bar.update(len(part))
    _write_captions(folder, caps)
    return folder


def _write_captions(folder: Path, caps: list[str]) -> None:
    tmp = folder / "captions.jsonl.tmp"
    with tmp.open("w") as f:
        for i, cap in enumerate(caps):
            f.write(json.dumps({"file": f"{i:06d}.png", "caption": cap, "id": f"train-{i}"}) + "\n")
    tmp.replace(folder / "captions.jsonl")


@dataclass
class Chunk:
    """What one worker task produced for items lo..hi-1: every caption (for captions.jsonl)
    and, for the pairs not yet stored, what ``RetrievalDB.upsert`` takes."""

    lo: int
    captions: list[str]
    ids: list[str]
    files: list[str]
    stored_captions: list[str]
    pooled: np.ndarray  # (m, D) float32: the index vectors
    h: np.ndarray  # (m, C, h', w') float32 H-features at t=0
    latents: np.ndarray  # (m, 4, h, w) float32 VAE means x scaling factor
    present: int  # pairs of the chunk already in the database


def _init_worker(model_dir: str, threads: int) -> None:
    """Pool initializer: one torch thread, malloc kept, the model loaded once per worker."""
    import torch

    from engines.pipeline import OneStepPipeline

    global _PIPE
    torch.set_num_threads(threads)
    keep_freed_memory()
    try:  # one progress bar (the build's), not one "Loading weights" bar per worker
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    _PIPE = OneStepPipeline.from_pretrained(model_dir)


def encode_chunk(pipe: Any, folder: Path, lo: int, hi: int, skip: frozenset[str] = frozenset(),
                 batch: int = ENCODE_BATCH, vae: Literal["bf16", "fp32"] = "fp32") -> Chunk:
    """Render items lo..hi-1 into ``folder`` and encode the pairs whose id is not in ``skip``.

    Ids, latents and H-features are those ``ingest`` computes from the written files (the
    PNG is lossless, so the rendered array is what ``load_image`` would decode); with
    ``vae="bf16"`` the VAE encoder runs under bf16 autocast (module doc).
    """
    import torch

    from retrieval.types import point_id

    imgs, caps, pngs = _render(folder, lo, hi)
    ids, keep = [], []
    for j, (cap, data) in enumerate(zip(caps, pngs, strict=True)):
        pid = point_id(cap, data)
        if pid not in skip:
            ids.append(pid), keep.append(j)
    stored = [caps[j].strip() for j in keep]
    where = {c: k for k, c in enumerate(dict.fromkeys(stored))}
    distinct = list(where)
    texts = [pipe.encode_text(distinct[s : s + batch]) for s in range(0, len(distinct), batch)]
    ctx_all = torch.cat([t.context for t in texts]) if texts else None
    pool_all = torch.cat([t.pooled for t in texts]) if texts else None
    pooled, hs, lats = [], [], []
    for s in range(0, len(keep), batch):
        sel = keep[s : s + batch]
        row = torch.as_tensor([where[c] for c in stored[s : s + batch]])
        assert ctx_all is not None and pool_all is not None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=vae == "bf16"):
            lat = pipe.encode_images(np.stack([imgs[j] for j in sel]))
        lat = lat.float()
        hs.append(pipe.retrieval_features(lat, ctx_all[row]).float().cpu().numpy())
        pooled.append(pool_all[row].float().cpu().numpy())
        lats.append(lat.cpu().numpy())
    ls = pipe.latent_size
    return Chunk(
        lo=lo, captions=caps, ids=ids, files=[f"{lo + j:06d}.png" for j in keep], stored_captions=stored,
        pooled=np.concatenate(pooled) if pooled else np.zeros((0, pipe.embed_dim), np.float32),
        h=np.concatenate(hs) if hs else np.zeros((0, *pipe.h_shape), np.float32),
        latents=np.concatenate(lats) if lats else np.zeros((0, pipe.latent_channels, ls, ls), np.float32),
        present=len(caps) - len(keep),
    )


def _encode_task(args: tuple[Path, int, int, frozenset[str], int, Literal["bf16", "fp32"]]) -> Chunk:
    return encode_chunk(_PIPE, *args)


def build_pairs(model: Path, database: Any, folder: Path, n: int, *, batch: int = ENCODE_BATCH,
                workers: int | None = None, progress: bool = True,
                vae: VaePrecision = "auto") -> tuple[int, int]:
    """Render, encode and store items 0..n-1 (see module doc); returns (added, already present).

    ``workers`` processes with one torch thread each (default: one per usable CPU, at most 8;
    each holds the model and peaks near 0.5 GB RSS, much of it shared with the parent);
    ``workers=1`` runs in this process with torch's own thread count. ``vae``: the VAE
    encoder's precision ("auto": bf16 where the CPU has it natively).
    """
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, usable_cpus())
    stored = frozenset(database.store.ids())
    skip = frozenset(i for i, ok in zip(stored, database.contains(list(stored)), strict=True) if ok)
    prec = resolve_vae_precision(vae)
    log.info("first-start build: %d pairs, %d worker(s), VAE encoder in %s", n, workers, prec)
    jobs = [(folder, lo, min(n, lo + RENDER_CHUNK), skip, batch, prec) for lo in range(0, n, RENDER_CHUNK)]
    caps: list[str] = []
    added = present = 0
    with tqdm(total=n, unit="pair", desc="build", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            # fork: the workers inherit the imported modules; each loads the model itself
            ctx = get_context("fork")
            with ctx.Pool(min(workers, len(jobs)), _init_worker, (str(model), 1)) as pool:
                chunks = pool.imap(_encode_task, jobs)
                for ch in chunks:
                    added, present = _store(database, ch, added, present)
                    caps += ch.captions
                    bar.update(len(ch.captions))
        else:
            from engines.pipeline import OneStepPipeline

            pipe = OneStepPipeline.from_pretrained(model)
            for job in jobs:
                ch = encode_chunk(pipe, *job)
                added, present = _store(database, ch, added, present)
                caps += ch.captions
                bar.update(len(ch.captions))
    _write_captions(folder, caps)
    if added:
        database.index.optimize()
    return added, present


def _store(database: Any, ch: Chunk, added: int, present: int) -> tuple[int, int]:
    import torch

    if ch.ids:
        database.upsert(ch.ids, torch.from_numpy(ch.pooled), torch.from_numpy(ch.h),
                        torch.from_numpy(ch.latents), ch.stored_captions, ch.files)
    return added + len(ch.ids), present + ch.present
