"""Precomputed retrieval pairs of the embedded database, shipped in ``toyworld/assets/retrieval/``.

First start loads them instead of rendering and encoding the 10 000-pair retrieval split.
They are keyed by ``encoder_fingerprint`` (the text encoder, tokenizer, VAE encoder and
UNet encoder tensors and configs: exactly what they depend on) and spot-checked against
the loaded model (``spot_check``); when either fails the loader logs why and the database
is built from the generator (``pair_build.build_pairs``). Compact form: caption vectors
float16, H-features and latents 6-bit with a float16 scale per pair and channel
(``meta.json`` records the measured error). ``ragturbo toyworld embedded-assets`` rewrites
them. Details and measurements: docs/toyworld.md, "First start".
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets" / "retrieval"
FORMAT = 1
BITS = 6
QMAX = 2 ** (BITS - 1) - 1
H_FILES = ("h-0.npz", "h-1.npz")
REST_FILE = "pairs.npz"
META_FILE = "meta.json"
CHECK_PAIRS = 8
"""Pairs rendered and encoded at load time and compared with the shipped values."""
H_TOLERANCE = 0.05
"""Largest relative L2 error of a checked pair's H-features (the 6-bit format gives ~0.016)."""
POOLED_TOLERANCE = 2e-3
"""Largest relative L2 error of a checked caption vector (float16 rounding gives ~2e-4)."""

# Tensors each component's encoder part is made of (prefixes of safetensors keys; None: all).
ENCODER_TENSORS: dict[str, tuple[str, ...] | None] = {
    "text_encoder": None,
    "vae": ("encoder.", "quant_conv."),
    "unet": ("conv_in.", "time_embedding.", "down_blocks.", "mid_block."),
}
_CONFIG_NOISE = ("_name_or_path", "_diffusers_version", "transformers_version", "_commit_hash")


def _config_bytes(path: Path) -> bytes:
    cfg = {k: v for k, v in json.loads(path.read_text()).items() if k not in _CONFIG_NOISE}
    return json.dumps(cfg, sort_keys=True).encode()


def encoder_fingerprint(model_dir: str | Path) -> str:
    """sha256 (16 hex) over the tokenizer files, the three configs and the encoder tensors
    (names, dtypes, shapes, bytes) the precomputed pairs depend on (module doc)."""
    import torch
    from safetensors import safe_open

    from engines.modeldir import file_sha256

    root = Path(model_dir)
    h = hashlib.sha256(f"ragturbo-encoders-{FORMAT}".encode())
    for f in sorted((root / "tokenizer").rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(root)}\0{file_sha256(f)}\n".encode())
    for comp, prefixes in ENCODER_TENSORS.items():
        h.update(comp.encode() + b"\0" + _config_bytes(root / comp / "config.json"))
        for f in sorted((root / comp).iterdir()):
            if f.suffix == ".bin":  # no tensor-level view: the whole file counts
                h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
            if f.suffix != ".safetensors":
                continue
            with safe_open(str(f), framework="pt") as st:
                for key in sorted(st.keys()):
                    if prefixes is not None and not key.startswith(prefixes):
                        continue
                    t = st.get_tensor(key).contiguous()
                    h.update(f"{comp}/{key}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
                    h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, ...) float -> 6-bit int8 codes and float16 per-(row, channel) absmax."""
    flat = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float32)
    amax = np.abs(flat).max(axis=2, keepdims=True).astype(np.float16)
    step = np.maximum(amax.astype(np.float32), 1e-12) / QMAX
    q = np.clip(np.rint(flat / step), -QMAX, QMAX).astype(np.int8)
    return q.reshape(x.shape), amax[..., 0]


def dequantize(q: np.ndarray, amax: np.ndarray) -> np.ndarray:
    scale = amax.astype(np.float32) / QMAX
    return q.astype(np.float32) * scale.reshape(*scale.shape, *([1] * (q.ndim - 2)))


def rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row ||a - b|| / ||b||."""
    a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.linalg.norm(a2 - b2, axis=1) / np.maximum(np.linalg.norm(b2, axis=1), 1e-12)


@dataclass
class Pairs:
    """The decoded assets: pair i of the split has ``ids[i]``, ``captions[i]`` (stripped),
    caption vector ``pooled[i]``, ``h[i]`` and ``latents[i]`` (float32)."""

    ids: list[str]
    captions: list[str]
    pooled: np.ndarray
    h: np.ndarray
    latents: np.ndarray


def read_meta(assets: Path = ASSETS) -> dict[str, Any] | None:
    try:
        return dict(json.loads((assets / META_FILE).read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def usable(assets: Path, key: str, n: int) -> tuple[bool, str]:
    """Whether the assets hold the first ``n`` pairs for encoder key ``key``; else why not."""
    meta = read_meta(assets)
    if meta is None:
        return False, f"no precomputed pairs at {assets}"
    if meta.get("format") != FORMAT:
        return False, f"{assets}/{META_FILE} has format {meta.get('format')!r}, this code reads {FORMAT}"
    if meta.get("key") != key:
        return False, (f"the precomputed pairs were made for encoder fingerprint {meta.get('key')}, "
                       f"this model's is {key} (an encoder changed)")
    if int(meta.get("n", 0)) < n:
        return False, f"the assets hold {meta.get('n')} pairs, {n} are wanted"
    return True, "ok"


def load_pairs(assets: Path, n: int) -> Pairs:
    """Decode the first ``n`` pairs (float32)."""
    rest = np.load(assets / REST_FILE)
    parts = [np.load(assets / f) for f in H_FILES]
    h = dequantize(np.concatenate([p["h_q"] for p in parts])[:n],
                   np.concatenate([p["h_amax"] for p in parts])[:n])
    lat = dequantize(rest["lat_q"][:n], rest["lat_amax"][:n])
    caps = json.loads((assets / "captions.json").read_text())
    which = rest["caption_index"][:n]
    ids = [str(uuid.UUID(bytes=b.tobytes())) for b in rest["ids"][:n]]
    return Pairs(ids=ids, captions=[caps[i] for i in which],
                 pooled=rest["pooled"][which].astype(np.float32), h=h, latents=lat)


def spot_check(pipe: Any, pairs: Pairs, folder: Path, n: int, count: int = CHECK_PAIRS) -> str | None:
    """Render and encode ``count`` pairs spread over the split with ``pipe`` (fp32) and
    compare with the shipped values; None when they agree, else what differs.

    Runs on one torch thread: on a shared 2-core machine two threads took 30x the CPU
    time for these small batches (4.7 against 0.15 CPU-s for 8 pairs, measured here).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _check(pipe, pairs, folder, n, count)
    finally:
        torch.set_num_threads(threads)


def _check(pipe: Any, pairs: Pairs, folder: Path, n: int, count: int) -> str | None:
    from toyworld.pair_build import encode_chunk

    folder.mkdir(parents=True, exist_ok=True)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(count, n))})
    for i in picks:
        ch = encode_chunk(pipe, folder, i, i + 1, vae="fp32")
        if ch.ids != [pairs.ids[i]]:
            return (f"pair {i}: the generator gives point id {ch.ids} and caption "
                    f"{ch.stored_captions!r}, the assets {pairs.ids[i]} ({pairs.captions[i]!r})")
        ep = float(rel_l2(pairs.pooled[i : i + 1], ch.pooled)[0])
        eh = float(rel_l2(pairs.h[i : i + 1], ch.h)[0])
        if ep > POOLED_TOLERANCE or eh > H_TOLERANCE:
            return (f"pair {i}: caption vector off by {ep:.2e} (tolerance {POOLED_TOLERANCE:g}), "
                    f"H-features by {eh:.3f} (tolerance {H_TOLERANCE:g}) relative L2")
    return None


def store_pairs(database: Any, pairs: Pairs, skip: frozenset[str], chunk: int = 2500) -> tuple[int, int]:
    """Upsert the pairs not in ``skip`` (files named as the build names them); (added, present)."""
    import torch

    keep = [i for i, pid in enumerate(pairs.ids) if pid not in skip]
    for s in range(0, len(keep), chunk):
        sel = keep[s : s + chunk]
        database.upsert([pairs.ids[i] for i in sel], torch.from_numpy(pairs.pooled[sel]),
                        torch.from_numpy(pairs.h[sel]), torch.from_numpy(pairs.latents[sel]),
                        [pairs.captions[i] for i in sel], [f"{i:06d}.png" for i in sel])
    return len(keep), len(pairs.ids) - len(keep)


def load_into(pipe: Any, model: Path, database: Any, folder: Path, n: int,
              assets: Path = ASSETS) -> tuple[int, int, dict[str, float]] | str:
    """Load the precomputed pairs into ``database``: (added, present, seconds per step), or
    the reason they cannot be used (then nothing was written)."""
    t0 = time.perf_counter()
    ok, why = usable(assets, encoder_fingerprint(model), n)
    if not ok:
        return why
    t1 = time.perf_counter()
    pairs = load_pairs(assets, n)
    t2 = time.perf_counter()
    bad = spot_check(pipe, pairs, folder, n)
    if bad is not None:
        return f"the precomputed pairs disagree with this model and generator: {bad}"
    t3 = time.perf_counter()
    stored = frozenset(database.store.ids())
    skip = frozenset(i for i, ok in zip(stored, database.contains(list(stored)), strict=True) if ok)
    added, present = store_pairs(database, pairs, skip)
    if added:
        database.index.optimize()
    t4 = time.perf_counter()
    return added, present, {"key": t1 - t0, "decode": t2 - t1, "check": t3 - t2, "store": t4 - t3}


def write_assets(out: Path, n: int = 10000, workers: int | None = None) -> dict[str, Any]:
    """Build the first ``n`` pairs exactly (fp32 VAE) for the shipped model in a scratch
    database, then write them to ``out`` in the compact form; returns meta.json's content."""
    import tempfile

    import torch

    from engines.default_model import SHIPPED
    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from toyworld.pair_build import build_pairs

    pipe = OneStepPipeline.from_pretrained(SHIPPED)
    with tempfile.TemporaryDirectory(prefix="ragturbo-assets-") as tmp:
        database = open_db_for_pipeline(DbConfig(db_path=Path(tmp)), pipe, create=True)
        try:
            build_pairs(SHIPPED, database, Path(tmp) / "images", n, workers=workers, vae="fp32")
            store = database.store
            by_index = {int(store.row(p)["file"][:6]): p for p in store.ids()}
            ids = [by_index[i] for i in range(n)]
            h = store.features(ids).float().numpy()
            lat = store.latents(ids).float().numpy()
            caps = [store.row(p)["caption"] for p in ids]
        finally:
            database.close()
    distinct = list(dict.fromkeys(caps))
    where = {c: k for k, c in enumerate(distinct)}
    with torch.inference_mode():
        pooled = np.concatenate([pipe.encode_text(distinct[s : s + 64]).pooled.float().numpy()
                                 for s in range(0, len(distinct), 64)])
    hq, ha = quantize(h)
    lq, la = quantize(lat)
    out.mkdir(parents=True, exist_ok=True)
    half = (n + 1) // 2
    for f, sl in zip(H_FILES, (slice(0, half), slice(half, n)), strict=True):
        np.savez_compressed(out / f, h_q=hq[sl], h_amax=ha[sl])
    np.savez_compressed(out / REST_FILE, ids=np.stack([np.frombuffer(uuid.UUID(p).bytes, np.uint8) for p in ids]),
                        caption_index=np.array([where[c] for c in caps], np.int32),
                        pooled=pooled.astype(np.float16), lat_q=lq, lat_amax=la)
    (out / "captions.json").write_text(json.dumps(distinct))
    eh, el = rel_l2(dequantize(hq, ha), h), rel_l2(dequantize(lq, la), lat)
    meta = {
        "format": FORMAT, "key": encoder_fingerprint(SHIPPED), "model_fingerprint": pipe.fingerprint,
        "n": n, "h_shape": list(h.shape[1:]), "latent_shape": list(lat.shape[1:]),
        "embed_dim": int(pooled.shape[1]), "bits": BITS, "vae": "fp32", "torch": torch.__version__,
        "rel_l2_against_fp16": {"h_mean": float(eh.mean()), "h_max": float(eh.max()),
                                "latents_mean": float(el.mean()), "latents_max": float(el.max())},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
