"""Ingest text-image pairs: caption table + image directory -> index + feature store.

Per batch: read and hash each file, reject bad rows, skip pairs already fully ingested,
then ``pipe.encode_text`` (pooled embedding for the index, context for H),
``pipe.encode_images`` (VAE latents) and ``pipe.retrieval_features`` (H at t=0).
Every ``commit_every`` new pairs the features are written durably, then indexed
(``RetrievalDB.upsert``), so an interrupted run loses at most the uncommitted pairs and
a second run resumes where it stopped.

Image policy: any size/aspect is centre-cropped to a square and resized (bicubic) to the
model resolution; images whose short side is below a quarter of that resolution are
rejected ("too small"), as are missing/unreadable files and empty captions.

One bad row never aborts a run: a line of the captions file that is not valid UTF-8,
not JSON (or not an object) (``retrieval.captions``), a caption that is not valid
Unicode (a lone surrogate), a ``file`` that is not a regular file (a FIFO, a device, a
directory: never opened for a blocking read) and a ``file`` that resolves outside the
images directory (``../x.png``, an absolute path, a symlink out) go to the rejects with
their reason; files outside are read only with ``allow_outside`` (``ragturbo ingest
--allow-outside-images``). Each reject names the 1-based ``line`` of its row in the
captions file, and an unreadable line keeps its ``raw`` text.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.captions import read_captions
from retrieval.db import DbConfig, RetrievalDB
from retrieval.feature_store import MANIFEST, FeatureStore
from retrieval.types import point_id

log = logging.getLogger(__name__)
MAX_CAPTION_CHARS = 1000


@dataclass
class Reject:
    line: int  # 1-based line (row) of the captions file
    file: str
    caption: str
    reason: str
    raw: str | None = None  # the line as written, when it could not be read


class NotRegularFile(OSError):
    """The ``file`` of a row is a FIFO, a socket, a device or a directory."""


def read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file; OSError for anything else (a FIFO would block a plain
    read forever: it is opened non-blocking and refused after fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"not a regular file: {path.name} (a FIFO, device or directory)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


@dataclass
class IngestReport:
    rows: int = 0
    added: int = 0
    already_present: int = 0
    duplicates: int = 0
    rejects: list[Reject] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        by: dict[str, int] = {}
        for r in self.rejects:
            key = r.reason.split(":")[0]
            by[key] = by.get(key, 0) + 1
        why = ", ".join(f"{k}: {v}" for k, v in sorted(by.items())) or "none"
        return (
            f"{self.rows} rows: {self.added} added, {self.already_present} already present, "
            f"{self.duplicates} duplicate rows, {len(self.rejects)} rejected ({why}) in {self.seconds:.1f}s"
        )


def load_image(data: bytes, resolution: int) -> np.ndarray:
    """Encoded image bytes -> uint8 (R,R,3): centre-crop to square, bicubic resize. Raises ValueError."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except UnidentifiedImageError as e:
        raise ValueError("unreadable image: not a format Pillow can decode") from e
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"unreadable image: {e}") from e
    w, h = im.size
    if min(w, h) < max(1, resolution // 4):
        raise ValueError(f"too small: {w}x{h} (< {resolution // 4} px short side)")
    im = im.convert("RGB")
    if (w, h) != (resolution, resolution):
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _chunks(n: int, size: int) -> Iterable[range]:
    for s in range(0, n, size):
        yield range(s, min(n, s + size))


class _Pending:
    """Encoded pairs not yet written: ``add`` encodes a batch (text, latents, H-features),
    ``commit`` upserts everything pending into the database in one call."""

    def __init__(self, db: RetrievalDB, rep: IngestReport, on_commit: Callable[[int], None] | None) -> None:
        self.db, self.rep, self.on_commit = db, rep, on_commit
        self.ids: list[str] = []
        self.caps: list[str] = []
        self.files: list[str] = []
        self.emb: list[Any] = []
        self.h: list[Any] = []
        self.lat: list[Any] = []

    def add(self, pipe: Any, ids: list[str], imgs: np.ndarray, caps: list[str], files: list[str]) -> None:
        text = pipe.encode_text(caps)
        lat = pipe.encode_images(imgs)
        h = pipe.retrieval_features(lat, text.context)
        self.ids += ids
        self.caps += caps
        self.files += files
        self.emb.append(text.pooled.float().cpu())
        self.h.append(h.float().cpu())
        self.lat.append(lat.float().cpu())

    def commit(self) -> None:
        if not self.ids:
            return
        import torch

        self.db.upsert(self.ids, torch.cat(self.emb), torch.cat(self.h), torch.cat(self.lat), self.caps, self.files)
        self.rep.added += len(self.ids)
        if self.on_commit:
            self.on_commit(self.rep.added)
        for v in (self.ids, self.caps, self.files, self.emb, self.h, self.lat):
            v.clear()


def _read_row(row: dict[str, str], i: int, root: Path, real_root: Path,
              allow_outside: bool) -> Reject | tuple[int, str, str, bytes]:
    """Check one row (caption, file name, path under ``root``) and read its file's bytes:
    (line, file, caption, bytes), or the ``Reject`` that says why the row is not ingested."""
    file, cap = row["file"], row["caption"].strip()
    ln = int(row.get("line") or i + 1)
    if row.get("error"):
        return Reject(ln, file, cap, row["error"], row.get("raw"))
    if not cap:
        return Reject(ln, file, cap, "empty caption")
    if len(cap) > MAX_CAPTION_CHARS:
        return Reject(ln, file, cap[:80], f"caption too long: {len(cap)} chars")
    if not file:
        return Reject(ln, file, cap, "missing file: no file name")
    try:
        cap.encode("utf-8")
    except UnicodeEncodeError as e:
        return Reject(ln, file, cap, f"invalid caption: not valid Unicode ({e.reason})")
    path = root / file
    try:
        if not allow_outside and not path.resolve().is_relative_to(real_root):
            return Reject(ln, file, cap, "outside --images: the file resolves outside "
                          f"{root} (allow with --allow-outside-images)")
        data = read_regular_file(path)
    except NotRegularFile as e:
        return Reject(ln, file, cap, str(e))
    except (OSError, ValueError) as e:  # ValueError: a name that is not a path
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        return Reject(ln, file, cap, f"missing file: {why}")
    return ln, file, cap, data


def ingest(
    pipe: Any,
    db: RetrievalDB,
    images_dir: str | Path,
    rows: list[dict[str, str]],
    *,
    batch: int = 32,
    commit_every: int = 256,
    rejects_path: str | Path | None = None,
    progress: bool = True,
    on_commit: Callable[[int], None] | None = None,
    allow_outside: bool = False,
) -> IngestReport:
    """Add ``rows`` ({"file","caption"}) to ``db``; idempotent and resumable. See module doc.

    ``allow_outside``: read files that resolve outside ``images_dir`` (default: reject).
    """
    from tqdm import tqdm

    if batch < 1 or commit_every < 1:
        raise ValueError(f"batch and commit_every must be >= 1; got {batch}, {commit_every}")
    t0 = time.perf_counter()
    rep = IngestReport(rows=len(rows))
    root = Path(images_dir)
    real_root = root.resolve()
    res = pipe.resolution
    seen: set[str] = set()
    pend = _Pending(db, rep, on_commit)

    bar = tqdm(total=len(rows), unit="pair", disable=not progress, desc="ingest")
    for rng in _chunks(len(rows), batch):
        ids, imgs, caps, files = [], [], [], []
        for i in rng:
            got = _read_row(rows[i], i, root, real_root, allow_outside)
            if isinstance(got, Reject):
                rep.rejects.append(got)
                continue
            ln, file, cap, data = got
            pid = point_id(cap, data)
            if pid in seen:
                rep.duplicates += 1
                continue
            seen.add(pid)
            try:
                img = load_image(data, res)
            except ValueError as e:
                rep.rejects.append(Reject(ln, file, cap, str(e)))
                continue
            ids.append(pid), imgs.append(img), caps.append(cap), files.append(file)
        done = db.contains(ids)
        rep.already_present += sum(done)
        todo = [j for j, d in enumerate(done) if not d]
        if todo:
            pend.add(pipe, [ids[j] for j in todo], np.stack([imgs[j] for j in todo]),
                     [caps[j] for j in todo], [files[j] for j in todo])
            if len(pend.ids) >= commit_every:
                pend.commit()
        bar.update(len(rng))
    pend.commit()
    bar.close()
    if rep.added:
        db.index.optimize()
    rep.seconds = time.perf_counter() - t0
    if rejects_path is not None:
        write_rejects(rep.rejects, rejects_path)
    log.info("ingest: %s", rep.summary())
    return rep


def write_rejects(rejects: list[Reject], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    # ensure_ascii (the default) writes a lone surrogate as "\ud800": the file stays UTF-8.
    lines = [json.dumps({k: v for k, v in asdict(r).items() if v is not None}) for r in rejects]
    tmp.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    os.replace(tmp, p)


def rebuild_features(pipe: Any, cfg: DbConfig, *, batch: int = 64, progress: bool = True) -> int:
    """Recompute H-features and index embeddings of every stored pair for ``pipe``'s model.

    Uses the stored latents and captions (no images needed). Writes a new store beside
    the old one, then swaps directories; the index vectors are re-upserted with the new
    text embeddings. Returns the number of pairs rebuilt.
    """
    from tqdm import tqdm

    root = Path(cfg.db_path) / "features"
    m = json.loads((root / MANIFEST).read_text())
    old = FeatureStore(root, m["fingerprint"])
    from retrieval.db import open_index

    index = open_index(cfg, pipe.embed_dim)  # first: a held shard is refused before any work
    new_root = Path(cfg.db_path) / f"features.rebuild-{pipe.fingerprint}"
    shutil.rmtree(new_root, ignore_errors=True)
    ls = pipe.latent_size
    try:
        new = FeatureStore(new_root, pipe.fingerprint, pipe.h_shape, (pipe.latent_channels, ls, ls))
    except BaseException:
        index.close()
        raise
    ids = list(old.ids())
    try:
        for rng in tqdm(list(_chunks(len(ids), batch)), disable=not progress, desc="rebuild"):
            bid = [ids[i] for i in rng]
            rows = [old.row(p) for p in bid]
            caps = [r["caption"] for r in rows]
            text = pipe.encode_text(caps)
            lat = old.latents(bid).to(pipe.device, pipe.dtype)
            h = pipe.retrieval_features(lat, text.context)
            new.put(bid, h, lat, caps, [r["file"] for r in rows])
            index.upsert(
                bid,
                text.pooled.float().cpu().numpy(),
                [
                    {"caption": r["caption"], "file": r["file"], "fingerprint": pipe.fingerprint}
                    for r in rows
                ],
            )
        index.optimize()
    finally:
        index.close()
    retired = Path(cfg.db_path) / f"features.old-{m['fingerprint']}"
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(root, retired)
    os.replace(new_root, root)
    shutil.rmtree(retired, ignore_errors=True)
    log.info(
        "rebuilt features of %d pairs for model %s (was %s)",
        len(ids),
        pipe.fingerprint,
        m["fingerprint"],
    )
    return len(ids)


__all__ = ["IngestReport", "Reject", "ingest", "read_captions", "rebuild_features", "write_rejects"]
