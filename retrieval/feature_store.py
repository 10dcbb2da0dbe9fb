"""Feature store: precomputed retrieved-branch H-features (fp16) and VAE latents, by point id.

Layout under ``root``::

    manifest.json            {"version", "fingerprint", "h_shape", "latent_shape", "shards": [...]}
    shards/<name>/h.npy      (N,C,h,w) float16, memory-mapped on read
    shards/<name>/latent.npy (N,4,h,w) float16 (to rebuild H when the UNet changes)
    shards/<name>/rows.json  [{"id", "caption", "file"}] in row order

Crash safety: a shard is written into ``shards/.tmp-*``, every file fsynced, the
directory renamed into place and fsynced; only then is a new ``manifest.json``
written to a temp file, fsynced and renamed over the old one. A shard that the
manifest does not name does not exist (it is removed on the next write), so a kill
at any point leaves either the old or the new manifest, never a torn shard. Ingest
indexes points in Qdrant only after ``put`` returns, and search drops any neighbour
whose id the store does not hold.

The manifest records the model fingerprint that produced the features; opening with
another fingerprint raises ``FingerprintMismatchError`` naming both.

Reading validates: a shard named by the manifest whose files cannot be read, whose row
count disagrees with its arrays, or whose H-features hold NaN or inf (checked once per
shard when it is loaded, one sequential read of ``h.npy``) is excluded -- its pairs are
not served -- while every other shard serves. ``bad_shards`` names each excluded shard
and why (an ERROR log line too; ``retrieval.compose`` reports it on /readyz), and
``refresh`` retries them (at most every ``retry_bad_s`` seconds), so a shard repaired on
disk is served again without a restart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.types import FingerprintMismatchError, RetrievalError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
VERSION = 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())


class FeatureStore:
    """fp16 H-features and latents keyed by point id, with an LRU cache of device tensors.

    Open with ``FeatureStore(root, fingerprint=..., h_shape=..., latent_shape=...)``; the
    shapes are needed only to create a new store. ``cache_items`` bounds the LRU cache.
    """

    def __init__(
        self,
        root: str | Path,
        fingerprint: str,
        h_shape: Sequence[int] | None = None,
        latent_shape: Sequence[int] | None = None,
        *,
        cache_items: int = 4096,
        device: str | torch.device = "cpu",
        retry_bad_s: float = 10.0,
    ) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.device = torch.device(device)
        self.cache_items = int(cache_items)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.RLock()
        self._manifest_mtime: int = -1
        self._shards: list[dict[str, Any]] = []
        self._cache.clear()
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._where: dict[str, tuple[str, int]] = {}
        self._rows: dict[str, dict[str, str]] = {}
        self.bad_shards: dict[str, str] = {}  # excluded shard name -> why
        self.retry_bad_s = float(retry_bad_s)
        self._bad_tried = 0.0
        self._manifest: dict[str, Any] = {}
        mpath = self.root / MANIFEST
        if mpath.is_file():
            m = self._read_manifest()
            if m["fingerprint"] != fingerprint:
                raise FingerprintMismatchError(m["fingerprint"], fingerprint, str(self.root))
            self.h_shape = tuple(m["h_shape"])
            self.latent_shape = tuple(m["latent_shape"])
            for want, have, what in (
                (h_shape, self.h_shape, "h_shape"),
                (latent_shape, self.latent_shape, "latent_shape"),
            ):
                if want is not None and tuple(want) != have:
                    raise RetrievalError(
                        f"feature store at {self.root} has {what} {have}, the model gives {tuple(want)}"
                    )
            self._load(m)
        else:
            if h_shape is None or latent_shape is None:
                raise RetrievalError(
                    f"no feature store at {self.root} (missing {mpath}); run `ragturbo ingest` first"
                )
            self.h_shape = tuple(int(v) for v in h_shape)
            self.latent_shape = tuple(int(v) for v in latent_shape)
            (self.root / "shards").mkdir(parents=True, exist_ok=True)
            self._commit([])
            self._load(self._read_manifest())

    # ------------------------------------------------------------------ manifest
    def _read_manifest(self) -> dict[str, Any]:
        mpath = self.root / MANIFEST
        try:
            self._manifest_mtime = mpath.stat().st_mtime_ns
            m = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RetrievalError(f"cannot read feature-store manifest {mpath}: {e}") from e
        if m.get("version") != VERSION:
            raise RetrievalError(
                f"{mpath}: unsupported version {m.get('version')!r} (expected {VERSION})"
            )
        return m

    def _commit(self, shards: list[dict[str, Any]]) -> None:
        m = {
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "h_shape": list(self.h_shape),
            "latent_shape": list(self.latent_shape),
            "dtype": "float16",
            "shards": shards,
        }
        tmp = self.root / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
        _write_file(tmp, json.dumps(m, indent=1).encode())
        os.replace(tmp, self.root / MANIFEST)
        _fsync_dir(self.root)

    def _load(self, m: dict[str, Any]) -> None:
        """Map ids to (shard,row); shards already loaded are kept (their files never change).
        A shard that fails ``_open_shard`` is excluded and recorded in ``bad_shards``."""
        shards = list(m["shards"])
        names = [s["name"] for s in shards]
        if set(self._arrays) - set(names):  # a shard went away (rebuild): start over
            self._arrays, self._where, self._rows = {}, {}, {}
            self._cache.clear()
        bad: dict[str, str] = {}
        for name in names:
            if name in self._arrays:
                continue
            try:
                arrays, rows = self._open_shard(self.root / "shards" / name)
            except RetrievalError as e:
                bad[name] = str(e)
                if self.bad_shards.get(name) != str(e):
                    log.error("%s; its pairs are not served (retried on refresh)", e)
                continue
            if name in self.bad_shards:
                log.info("feature-store shard %s is readable again: %d pairs served", name, len(rows))
            self._arrays[name] = arrays
            for r, row in enumerate(rows):
                self._where[row["id"]] = (name, r)
                self._rows[row["id"]] = row
        self.bad_shards = bad
        self._bad_tried = time.monotonic()
        self._shards = shards
        self._manifest = m

    def _open_shard(self, d: Path) -> tuple[tuple[np.ndarray, np.ndarray], list[dict[str, str]]]:
        """Memory-map one shard and validate it (readable, consistent, finite H-features)."""
        try:
            arrays = (np.load(d / "h.npy", mmap_mode="r"), np.load(d / "latent.npy", mmap_mode="r"))
            rows = json.loads((d / "rows.json").read_text())
        except (OSError, ValueError) as e:
            raise RetrievalError(f"feature-store shard {d} named in the manifest is unreadable: {e}") from e
        h = arrays[0]
        if len(rows) != len(h) or len(rows) != len(arrays[1]):
            raise RetrievalError(f"feature-store shard {d}: {len(rows)} rows but {len(h)} features")
        if tuple(h.shape[1:]) != self.h_shape:
            raise RetrievalError(f"feature-store shard {d}: H-features {h.shape[1:]}, expected {self.h_shape}")
        bad = 0
        for i in range(0, len(h), 1024):  # bounded memory on a large memory-mapped shard
            bad += int((~np.isfinite(h[i : i + 1024]).reshape(min(1024, len(h) - i), -1).all(1)).sum())
        if bad:
            raise RetrievalError(f"feature-store shard {d}: non-finite H-features (NaN or inf) in {bad} of {len(h)} rows")
        return arrays, rows

    def refresh(self) -> bool:
        """Reload the manifest if another process committed; True if it changed."""
        with self._lock:
            try:
                mt = (self.root / MANIFEST).stat().st_mtime_ns
            except OSError as e:
                raise RetrievalError(f"feature store at {self.root} vanished: {e}") from e
            if mt == self._manifest_mtime:
                if self.bad_shards and time.monotonic() - self._bad_tried >= self.retry_bad_s:
                    n = len(self._where)
                    self._load(self._manifest)  # retry the excluded shards
                    return len(self._where) != n
                return False
            m = self._read_manifest()
            if m["fingerprint"] != self.fingerprint:
                raise FingerprintMismatchError(m["fingerprint"], self.fingerprint, str(self.root))
            self._load(m)
            return True

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, pid: object) -> bool:
        return pid in self._where

    def has(self, ids: Sequence[str]) -> list[bool]:
        return [i in self._where for i in ids]

    def ids(self) -> Iterator[str]:
        return iter(list(self._where))

    def row(self, pid: str) -> dict[str, str]:
        """{"id", "caption", "file"} of a stored pair."""
        return self._rows[pid]

    def _get(self, pid: str, which: int) -> np.ndarray:
        loc = self._where.get(pid)
        if loc is None:
            self.refresh()
            loc = self._where.get(pid)
            if loc is None:
                raise RetrievalError(f"point {pid} has no features in {self.root}")
        return self._arrays[loc[0]][which][loc[1]]

    def features(self, ids: Sequence[str]) -> torch.Tensor:
        """ids (n) -> H-features (n,C,h,w) float16 on the store's device (LRU-cached)."""
        out = []
        with self._lock:
            for pid in ids:
                t = self._cache.get(pid)
                if t is None:
                    t = torch.from_numpy(np.array(self._get(pid, 0))).to(self.device)
                    self._cache[pid] = t
                    if len(self._cache) > self.cache_items:
                        self._cache.popitem(last=False)
                else:
                    self._cache.move_to_end(pid)
                out.append(t)
        if not out:
            return torch.zeros((0, *self.h_shape), dtype=torch.float16, device=self.device)
        return torch.stack(out)

    def latents(self, ids: Sequence[str]) -> torch.Tensor:
        """ids (n) -> VAE latents (n,4,h,w) float16 (CPU, uncached)."""
        with self._lock:
            return torch.from_numpy(np.stack([np.array(self._get(p, 1)) for p in ids]))

    # ------------------------------------------------------------------ writes
    def put(
        self,
        ids: Sequence[str],
        h: torch.Tensor | np.ndarray,
        latents: torch.Tensor | np.ndarray,
        captions: Sequence[str],
        files: Sequence[str],
    ) -> int:
        """Durably add pairs (ids already stored are skipped). h (N,C,h,w), latents (N,4,h,w).

        Returns the number of new rows. When it returns, the rows survive a crash.
        """
        hn = h.detach().float().cpu().numpy() if isinstance(h, torch.Tensor) else np.asarray(h)
        ln = (
            latents.detach().float().cpu().numpy()
            if isinstance(latents, torch.Tensor)
            else np.asarray(latents)
        )
        n = len(ids)
        if hn.shape != (n, *self.h_shape) or ln.shape != (n, *self.latent_shape):
            raise ValueError(
                f"expected h {(n, *self.h_shape)} and latents {(n, *self.latent_shape)}; "
                f"got {hn.shape}, {ln.shape}"
            )
        if len(captions) != n or len(files) != n:
            raise ValueError(f"{n} ids but {len(captions)} captions and {len(files)} files")
        if not np.isfinite(hn).all():
            raise ValueError("H-features contain NaN or inf; refusing to store them")
        with self._lock, self._writer_lock():
            self.refresh()
            seen: set[str] = set()
            keep = []
            for i, pid in enumerate(ids):
                if pid not in self._where and pid not in seen:
                    keep.append(i)
                    seen.add(pid)
            if not keep:
                return 0
            self._sweep_tmp()
            name = f"{len(self._shards):06d}-{uuid.uuid4().hex[:8]}"
            tmp = self.root / "shards" / f".tmp-{name}"
            tmp.mkdir(parents=True)
            _save_npy(tmp / "h.npy", hn[keep].astype(np.float16))
            _save_npy(tmp / "latent.npy", ln[keep].astype(np.float16))
            rows = [{"id": ids[i], "caption": captions[i], "file": files[i]} for i in keep]
            _write_file(tmp / "rows.json", json.dumps(rows).encode())
            _fsync_dir(tmp)
            os.replace(tmp, self.root / "shards" / name)
            _fsync_dir(self.root / "shards")
            self._commit([*self._shards, {"name": name, "count": len(keep)}])
            self._load(self._read_manifest())
            return len(keep)

    def _writer_lock(self) -> Any:
        root = self.root

        class _L:
            def __enter__(self) -> None:
                self.f = open(root / ".write.lock", "w")
                fcntl.flock(self.f, fcntl.LOCK_EX)

            def __exit__(self, *exc: object) -> None:
                fcntl.flock(self.f, fcntl.LOCK_UN)
                self.f.close()

        return _L()

    def _sweep_tmp(self) -> None:
        """Remove shards an interrupted writer left behind (not named by the manifest)."""
        named = {s["name"] for s in self._shards}
        for d in (self.root / "shards").iterdir():
            if d.name not in named:
                log.info("removing unreferenced shard %s (interrupted write)", d)
                shutil.rmtree(d, ignore_errors=True)
        for f in self.root.glob(f".{MANIFEST}.*.tmp"):
            f.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        return {
            "points": len(self),
            "shards": len(self._shards),
            "fingerprint": self.fingerprint,
            "h_shape": list(self.h_shape),
            "cached": len(self._cache),
            "bad_shards": dict(self.bad_shards),
        }
