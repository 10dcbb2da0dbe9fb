"""Training pairs: (id, caption, image or latent) from a folder or a parquet file.

Folder: image files plus ``captions.jsonl`` with one ``{"file", "caption"[, "id"]}`` per line
(``file`` relative to the folder), and optionally ``latents.npy`` (N,4,h,w): line n's exact
target latent (``training.teacher_samples`` writes it, so training needs no VAE round trip). Parquet: columns ``caption``, optional ``id``, and
``image`` (encoded PNG/JPEG bytes, or a struct with ``bytes``) and/or ``latent`` (a flat list
of floats, reshaped to the student's latent shape (4,h,w)). A row's id defaults to the
retrieval package's point id (uuid5 of caption ‖ image bytes), so excluding "the pair itself"
matches what ``ragturbo ingest`` stored.

Paired targets: a row may carry ``noise_seed`` (an integer; ``captions.jsonl`` field or
parquet column), the seed of the noise ε its target was generated from (teacher samples,
``training.teacher_samples``). The job then feeds the student exactly
``OneStepPipeline.initial_noise([noise_seed])`` for that row, so the regression losses
compare the student's one-step output with the teacher's sample *from the same ε*. Rows
without it (real images) are unpaired.

The data order is a pure function of (seed, step): ``batch_indices`` draws a fresh
permutation per epoch, so resuming at a step reproduces the exact batches.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.types import point_id

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Pair:
    id: str
    caption: str
    image_path: Path | None = None
    image_bytes: bytes | None = None
    latent: np.ndarray | None = None  # float32, flat or (4,h,w)
    noise_seed: int | None = None  # seed of the ε the target was sampled from (paired target)


def _noise_seed(value: object, where: str) -> int | None:
    """A row's ``noise_seed``: None when absent, else a non-negative int (fails naming the row)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise ValueError(f"{where}: noise_seed must be a non-negative integer, got {value!r}")
    return int(value)


def read_pairs(path: str | Path, fmt: str = "auto", max_items: int | None = None) -> list[Pair]:
    """All pairs of a dataset (images are read lazily, ids eagerly)."""
    p = Path(path)
    if fmt == "auto":
        fmt = "parquet" if p.suffix == ".parquet" else "folder"
    if fmt == "folder":
        pairs = _read_folder(p, max_items)
    elif fmt == "parquet":
        pairs = _read_parquet(p, max_items)
    else:
        raise ValueError(f"data.format must be auto, folder or parquet; got {fmt!r}")
    if not pairs:
        raise ValueError(f"dataset {p} has no pairs")
    ids = [q.id for q in pairs]
    if len(set(ids)) != len(ids):
        log.warning("dataset %s has %d duplicate ids", p, len(ids) - len(set(ids)))
    return pairs


def _read_folder(root: Path, max_items: int | None) -> list[Pair]:
    cap = root / "captions.jsonl"
    if not cap.is_file():
        raise FileNotFoundError(f"dataset folder {root} has no captions.jsonl")
    lines = [(n, line) for n, line in enumerate(cap.read_text().splitlines(), 1) if line.strip()]
    lat_f = root / "latents.npy"
    lats = np.load(lat_f, mmap_mode="r") if lat_f.is_file() else None
    if lats is not None and len(lats) != len(lines):
        raise ValueError(f"{lat_f} has {len(lats)} latents for {len(lines)} lines of {cap}")
    pairs: list[Pair] = []
    for n, line in lines:
        try:
            rec = json.loads(line)
            f, caption = rec["file"], str(rec["caption"])
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{cap}:{n}: need a JSON object with 'file' and 'caption' ({e})") from e
        img = root / f
        if not img.is_file():
            raise FileNotFoundError(f"{cap}:{n}: image {img} does not exist")
        pid = str(rec["id"]) if rec.get("id") else point_id(caption, img.read_bytes())
        seed = _noise_seed(rec.get("noise_seed"), f"{cap}:{n}")
        lat = None if lats is None else np.array(lats[len(pairs)], dtype=np.float32)
        pairs.append(Pair(id=pid, caption=caption, image_path=img, latent=lat, noise_seed=seed))
        if max_items and len(pairs) >= max_items:
            break
    return pairs


def _read_parquet(path: Path, max_items: int | None) -> list[Pair]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileNotFoundError(f"parquet dataset {path} does not exist")
    table = pq.read_table(path)
    cols = set(table.column_names)
    if "caption" not in cols or not ({"image", "latent"} & cols):
        raise ValueError(f"{path} needs 'caption' and 'image' or 'latent' columns; has {sorted(cols)}")
    rows = table.to_pylist()[: max_items or None]
    pairs = []
    for r in rows:
        img = r.get("image")
        if isinstance(img, dict):
            img = img.get("bytes")
        lat = r.get("latent")
        lat_arr = None if lat is None else np.asarray(lat, dtype=np.float32)
        if img is None and lat_arr is None:
            raise ValueError(f"{path}: row {r.get('id')!r} has neither image nor latent")
        if r.get("id"):
            pid = str(r["id"])
        elif img is not None:
            pid = point_id(str(r["caption"]), img)
        else:
            pid = point_id(str(r["caption"]), lat_arr.tobytes())  # type: ignore[union-attr]
        seed = _noise_seed(r.get("noise_seed"), f"{path}: row {pid}")
        pairs.append(Pair(id=pid, caption=str(r["caption"]), image_bytes=img, latent=lat_arr,
                          noise_seed=seed))
    return pairs


def load_image(pair: Pair, resolution: int) -> np.ndarray:
    """uint8 (resolution, resolution, 3): RGB, shorter side resized, centre-cropped."""
    from PIL import Image

    src = pair.image_path if pair.image_path is not None else io.BytesIO(pair.image_bytes or b"")
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = resolution / min(w, h)
        if (w, h) != (resolution, resolution):
            im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))),
                           Image.Resampling.BICUBIC)
            w, h = im.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
        return np.asarray(im, dtype=np.uint8)


def batch_indices(n: int, global_batch: int, step: int, seed: int) -> np.ndarray:
    """Indices of the global batch at ``step`` (0-based): consecutive slices of per-epoch
    permutations of range(n), drawn with numpy's PCG64 seeded by (seed, epoch)."""
    if n < 1 or global_batch < 1:
        raise ValueError(f"need n >= 1 and global_batch >= 1, got {n}, {global_batch}")
    start = step * global_batch
    out = np.empty(global_batch, dtype=np.int64)
    filled = 0
    while filled < global_batch:
        epoch, off = divmod(start + filled, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(n - off, global_batch - filled)
        out[filled : filled + take] = perm[off : off + take]
        filled += take
    return out


def shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's contiguous share of a global batch (global batch % world == 0)."""
    if len(indices) % world:
        raise ValueError(f"global batch {len(indices)} is not divisible by world size {world}")
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]
